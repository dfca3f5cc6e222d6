"""Which model the series runs: ``VLM_MODEL`` (a Hub id, a local folder, or an offline stand-in).

Unset: the real SmolVLM2-256M, or, when the Hub can't be reached and it isn't cached, the ``smollm2-256m``
stand-in (and every notebook says so). An unreachable Hub id given explicitly stops with one clear sentence.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from helpers import synthetic
from helpers.paths import cache_dir

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
FALLBACK_STANDIN = "smollm2-256m"  # speaks real English; synthetic-256m stays the all-random build
HUB_TIMEOUT_S = 5.0
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class ModelUnavailableError(RuntimeError):
    """The requested model can't be loaded here; the message says why and what to do, in one sentence."""


@dataclass(frozen=True)
class ModelChoice:
    """The model a run uses. ``source`` is what ``from_pretrained`` gets (a Hub id or a local folder)."""

    requested: str
    source: str
    slug: str
    is_standin: bool
    fell_back: bool = False
    reason: str = ""

    @property
    def standin_name(self) -> str | None:
        """The stand-in's own name (also for an IR or a copy of one in another folder: its marker carries it)."""
        if not self.is_standin:
            return None
        if self.slug in synthetic.SPECS:
            return self.slug
        return (synthetic.read_marker(Path(self.source)) or {}).get("name")

    @property
    def real_vision(self) -> bool:
        """True when the vision encoder has real weights (only the real model: every stand-in's is random)."""
        return not self.is_standin

    @property
    def real_language_model(self) -> bool:
        """True when the language model has real weights: the real model, or a stand-in built with them."""
        spec = synthetic.SPECS.get(self.standin_name)
        return not self.is_standin or bool(spec and spec.real_language_model)


def standin_path(name: str) -> Path:
    """Folder of a built stand-in in the cache."""
    return cache_dir() / "standins" / name


def ensure_standin(name: str) -> Path:
    """Build stand-in ``name`` once (deterministically) and reuse it afterwards."""
    path = standin_path(name)
    found = synthetic.problems(path)
    if found:
        if path.exists():
            print(f"The stand-in in {path} can't be reused ({'; '.join(found)}); rebuilding it.", flush=True)
        print(f"Building the offline stand-in {name!r} into {path} (once; later runs reuse it)...", flush=True)
        synthetic.build_standin(name, path)
    return path


def prefetched_path(repo_id: str) -> Path:
    """Where a workshop prefetch keeps a Hub model as a plain folder."""
    return cache_dir() / "hub" / repo_id.replace("/", "__")


def hub_status(repo_id: str, timeout: float = HUB_TIMEOUT_S) -> str:
    """Return ``"ok"`` when the Hub answers for ``repo_id``, else a short reason it can't be used."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    import requests

    try:
        response = requests.head(f"{constants.ENDPOINT}/api/models/{repo_id}", timeout=(timeout, timeout))
    except requests.RequestException as err:
        return f"no connection to {constants.ENDPOINT} ({type(err).__name__})"
    if response.status_code in (401, 403, 404):
        return f"the Hub has no public model named {repo_id!r} (HTTP {response.status_code})"
    if response.status_code >= 400:
        return f"the Hub answered HTTP {response.status_code}"
    return "ok"


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def resolve_model(requested: str | None = None) -> ModelChoice:
    """Turn ``requested`` (default: ``VLM_MODEL``, else the real SmolVLM2) into a :class:`ModelChoice`; raise
    :class:`ModelUnavailableError` (one sentence) when an explicitly requested model can't be had."""
    explicit = requested if requested is not None else os.environ.get("VLM_MODEL", "").strip() or None
    name = explicit or DEFAULT_MODEL_ID

    if name in synthetic.SPECS:
        return ModelChoice(requested=name, source=str(ensure_standin(name)), slug=name, is_standin=True)

    folder = Path(name).expanduser()
    if folder.is_dir() or name.startswith((".", "/", "~")):
        if not (folder / "config.json").is_file():
            raise ModelUnavailableError(
                f"VLM_MODEL={name!r} is not a model folder (no config.json in {folder.resolve()}): "
                "point it at a folder saved with save_pretrained, a Hub id, or a stand-in "
                "(smollm2-256m, synthetic-256m, synthetic-tiny)."
            )
        return ModelChoice(requested=name, source=str(folder.resolve()), slug=folder.resolve().name,
                           is_standin=synthetic.read_marker(folder) is not None)

    if not _HUB_ID.match(name):
        raise ModelUnavailableError(
            f"VLM_MODEL={name!r} is neither a Hub id (owner/name), an existing folder, "
            f"nor one of {sorted(synthetic.SPECS)}."
        )
    slug = name.split("/")[-1]
    local = prefetched_path(name)
    if (local / "config.json").is_file():
        return ModelChoice(requested=name, source=str(local), slug=slug, is_standin=False)
    status = "ok" if _in_hub_cache(name) else hub_status(name)
    if status == "ok":
        return ModelChoice(requested=name, source=name, slug=slug, is_standin=False)
    if explicit is None:
        return ModelChoice(requested=name, source=str(ensure_standin(FALLBACK_STANDIN)), slug=FALLBACK_STANDIN,
                           is_standin=True, fell_back=True, reason=status)
    raise ModelUnavailableError(
        f"Cannot load {name!r}: {status} and it is not in the local cache; connect to the internet and run "
        f"`make prefetch VLM_MODEL={name}` once, or set VLM_MODEL=smollm2-256m to use the offline stand-in."
    )


@dataclass(frozen=True)
class Banner:
    """What a notebook shows first: which model runs, and plainly whether it is a stand-in."""

    choice: ModelChoice

    @property
    def text(self) -> str:
        c = self.choice
        if not c.is_standin:
            return f"Model: {c.requested} (real weights), loaded from {c.source}."
        spec = synthetic.SPECS.get(c.standin_name)
        lines = []
        if c.fell_back:
            lines.append(
                f"OFFLINE FALLBACK: the default model {c.requested} could not be reached ({c.reason}), "
                f"so this run uses the stand-in {c.slug!r}. To use the real model, connect to the internet "
                "(or run `make prefetch` where you have one) and run again."
            )
        if spec is not None and spec.real_language_model:
            lines.append(f"STAND-IN MODEL IN USE: {c.slug!r} has the full SmolVLM2-256M architecture; {spec.note}.")
        else:
            size = {"synthetic-tiny": "a tiny SmolVLM for tests",
                    "synthetic-256m": "the full SmolVLM2-256M architecture"}.get(c.standin_name, "a SmolVLM stand-in")
            lines.append(
                f"STAND-IN MODEL IN USE: {c.slug!r} is {size} with random weights and SmolLM2's real tokenizer. "
                "Its text is meaningless; its timings are real."
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        color = "#fff3cd" if self.choice.is_standin else "#e7f5e9"
        body = "<br>".join(self.text.splitlines())
        return f'<div style="background:{color};border:2px solid #c9a227;padding:10px;font-size:1.05em">{body}</div>'


def show_banner(choice: ModelChoice) -> Banner:
    """Display (as a cell's last line) the banner saying which model runs and whether it's a stand-in."""
    return Banner(choice)
