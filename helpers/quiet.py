"""Silence library messages that look like failures but are harmless, at the logger that emits them.

Only exact, known messages are dropped (the README explains each). Installed when ``helpers`` is imported;
:func:`is_known_noise` lets :func:`helpers.export.run_cli` drop them from a command's output.
"""

from __future__ import annotations

import logging

# (logger name, start of the harmless message)
KNOWN_NOISE = (
    # optimum-intel 2.2.0 offline: it looks a local folder up in the Hub cache, fails, then loads the folder as asked.
    ("optimum.intel.openvino.modeling_base", "Could not infer whether the model was already converted"),
    # OpenVINO's PyTorch frontend (build_wrapper) then traces the original module, "to avoid user confusion".
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
