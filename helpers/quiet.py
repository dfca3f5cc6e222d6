"""Silence library messages that look like failures but are harmless, at the logger that emits them.

Only exact, known messages are dropped; everything else a library logs still shows. Installed when ``helpers``
is imported, so the notebooks' own library calls are covered too; :func:`is_known_noise` lets
:func:`helpers.export.run_cli` drop the same lines from a command's output.

- optimum-intel 2.2.0, ``OVBaseModel.from_pretrained`` under ``HF_HUB_OFFLINE=1`` (or with
  ``local_files_only``): it looks for the model in the Hub cache even when it is given a local folder, fails
  (``[Errno 2] No such file or directory: '.../refs/main'``, or ``Path.replace() takes 2 positional
  arguments`` for a ``pathlib.Path``) and logs "Could not infer whether the model was already converted or not
  to the OpenVINO IR, keeping `export=...`". It then loads the folder exactly as asked.
- OpenVINO's PyTorch frontend, while exporting: "Failed to build model wrapper." (logged as an error by
  ``openvino.frontend.pytorch.utils.build_wrapper``, which then traces the original module, as its own comment
  says, "to avoid user confusion").
"""

from __future__ import annotations

import logging

# (logger name, start of the harmless message)
KNOWN_NOISE = (
    ("optimum.intel.openvino.modeling_base", "Could not infer whether the model was already converted"),
    ("openvino.frontend.pytorch.utils", "Failed to build model wrapper"),
)


def is_known_noise(text: str) -> bool:
    """True when ``text`` (a log record's message, or a line a library printed) is one of the known messages."""
    return any(text.strip().startswith(prefix) for _, prefix in KNOWN_NOISE)


class _DropKnownNoise(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def install() -> None:
    """Add the filters (once) to the loggers that emit the known harmless messages."""
    for name, prefix in KNOWN_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropKnownNoise(prefix))
