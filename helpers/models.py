"""Which model the series runs: ``VLM_MODEL`` (a Hub id, a local folder, or an offline stand-in), and its banner.

Unset: the real SmolVLM2-256M, or, when the Hub can't be reached and it isn't cached, the ``smollm2-256m``
stand-in (and every notebook says so). An unreachable Hub id given explicitly stops with one clear sentence.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from helpers import standins, store

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
# The checkpoints the course names (openvino_notebooks' smolvlm2 offers the same three): its self-checks of answers
# ("the capital of France is Paris") run for these and the speaking stand-in only.
KNOWN_MODELS = (DEFAULT_MODEL_ID, "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
                "HuggingFaceTB/SmolVLM2-2.2B-Instruct")
FALLBACK_STANDIN = "smollm2-256m"
HUB_TIMEOUT_S = 5.0


class ModelUnavailableError(RuntimeError):
    """The requested model can't be loaded here; the message says why and what to do, in one sentence."""


@dataclass(frozen=True)
class ModelChoice:
    """The model a run uses. ``source`` is what ``from_pretrained`` gets (a Hub id or a local folder)."""

    requested: str
    source: str
    slug: str
    fell_back: bool = False
    reason: str = ""

    @property
    def standin_name(self) -> str | None:
        """The stand-in's name, also for a copy of one in another folder (its config carries it); else ``None``."""
        return (standins.record(Path(self.source)) or {}).get("name") if Path(self.source).is_dir() else None

    @property
    def is_standin(self) -> bool:
        return self.standin_name is not None

    @property
    def real_vision(self) -> bool:
        """True when the vision encoder has trained weights (every stand-in's is random)."""
        return not self.is_standin

    @property
    def real_language_model(self) -> bool:
        """True when the language model has trained weights: any real model, or the speaking stand-in."""
        spec = standins.SPECS.get(self.standin_name)
        return not self.is_standin or bool(spec and spec.real_language_model)

    @property
    def known(self) -> bool:
        """True for the models whose answers the course can check (:data:`KNOWN_MODELS`, the speaking stand-in)."""
        return self.requested in KNOWN_MODELS or self.standin_name == FALLBACK_STANDIN


def standin_path(name: str) -> Path:
    """Folder of a built stand-in in the cache."""
    return store.cache_dir() / "standins" / name


def prefetched_path(repo_id: str) -> Path:
    """Where ``make prefetch`` keeps a Hub model as a plain folder."""
    return store.cache_dir() / "hub" / repo_id.replace("/", "__")


def hub_status(repo_id: str, timeout: float = HUB_TIMEOUT_S) -> str:
    """``"ok"`` when the Hub answers for ``repo_id``, else a short reason it can't be used."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        HfApi().model_info(repo_id, timeout=timeout)
    except RepositoryNotFoundError:
        return f"the Hub has no public model named {repo_id!r}"
    except HfHubHTTPError as err:
        return f"the Hub answered {err.response.status_code if err.response is not None else 'with an error'}"
    except Exception as err:  # no route, no name resolution, a timeout: requests' and urllib3's own errors
        return f"no connection to {constants.ENDPOINT} ({type(err).__name__})"
    return "ok"


def _in_hub_cache(repo_id: str) -> bool:
    """True when the Hugging Face cache holds the model's config and weights (a download cut short may hold only
    the config, which the export's first check fetches)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, name), str)

    return cached("config.json") and (cached("model.safetensors") or cached("model.safetensors.index.json"))


def resolve_model(requested: str | None = None) -> ModelChoice:
    """Turn ``requested`` (default: ``VLM_MODEL``, else the real SmolVLM2) into a :class:`ModelChoice`; raise
    :class:`ModelUnavailableError` (one sentence) when an explicitly requested model can't be had."""
    explicit = requested if requested is not None else os.environ.get("VLM_MODEL", "").strip() or None
    name = explicit or DEFAULT_MODEL_ID
    if name in standins.SPECS:
        return ModelChoice(name, str(standins.build(name, standin_path(name))), name)
    folder = store.from_root(name) if requested is None else Path(name).expanduser()  # VLM_MODEL: a setting
    if folder.is_dir() or name.startswith((".", "/", "~")):
        if not (folder / "config.json").is_file():
            raise ModelUnavailableError(
                f"VLM_MODEL={name!r} is not a model folder (no config.json in {folder.resolve()}): point it at a "
                f"folder saved with save_pretrained, a Hub id, or a stand-in ({', '.join(standins.SPECS)}).")
        return ModelChoice(name, str(folder.resolve()), folder.resolve().name)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise ModelUnavailableError(f"VLM_MODEL={name!r} is neither a Hub id (owner/name), an existing folder, "
                                    f"nor one of {', '.join(standins.SPECS)}.")
    slug = name.split("/")[-1]
    if not store.problems(prefetched_path(name), required=["config.json"]):
        return ModelChoice(name, str(prefetched_path(name)), slug)
    status = "ok" if _in_hub_cache(name) else hub_status(name)
    if status == "ok":
        return ModelChoice(name, name, slug)
    if explicit is None:
        path = standins.build(FALLBACK_STANDIN, standin_path(FALLBACK_STANDIN))
        return ModelChoice(name, str(path), FALLBACK_STANDIN, fell_back=True, reason=status)
    raise ModelUnavailableError(
        f"Cannot load {name!r}: {status} and it is not in the local cache; connect to the internet and run "
        f"`make prefetch VLM_MODEL={name}` once, or set VLM_MODEL=smollm2-256m to use the offline stand-in.")


@dataclass(frozen=True)
class Banner:
    """What a notebook shows first: which model runs, and plainly what in it is real."""

    choice: ModelChoice

    @property
    def text(self) -> str:
        c = self.choice
        lines = []
        if c.fell_back:
            lines.append(f"OFFLINE FALLBACK: the default model {c.requested} could not be reached ({c.reason}), so "
                         f"this run uses the stand-in {c.slug!r}. To use the real model, connect to the internet (or "
                         "run `make prefetch` where you have one) and run again.")
        if c.is_standin:
            spec = standins.SPECS.get(c.standin_name)
            what = ("the full SmolVLM2-256M architecture" if c.standin_name != "synthetic-tiny"
                    else "a tiny SmolVLM for tests")
            lines.append(f"STAND-IN MODEL IN USE: {c.slug!r} has {what}; "
                         + (spec.note if spec else standins.RANDOM_NOTE))
        elif Path(c.source).is_dir() and not c.source.startswith(str(store.cache_dir())):
            lines.append(f"Model: your model from {c.source}. The course has no expected answers for it, so it "
                         "shows its answers without checking them.")
        else:
            lines.append(f"Model: {c.requested} (real weights), loaded from {c.source}.")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        color = "#fff3cd" if self.choice.is_standin else "#e7f5e9"
        body = "<br>".join(self.text.splitlines())
        return f'<div style="background:{color};border:2px solid #c9a227;padding:10px;font-size:1.05em">{body}</div>'


def show_banner(choice: ModelChoice) -> Banner:
    """The banner saying which model runs and what in it is real (display it as a cell's last line)."""
    return Banner(choice)
