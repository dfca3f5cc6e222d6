"""Where the course keeps what it builds, and how: a folder appears complete, or not at all.

Every builder (exports, quantized variants, stand-ins, GGUF files) goes through :func:`build`: one process at a
time per folder (``filelock``: ``<name>.lock``), built into ``<name>.partial`` and renamed into place when complete;
a rebuild keeps the old folder as ``<name>.old`` until the new one is in. A finished folder holds one marker,
``build.json``: what it was built from (``facts``: library versions, recipe...), each file's size, the build's time
and peak memory. Written by hand: filelock gives the lock, no library we install swaps folders.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MARKER = "build.json"
NEARLY_FULL_BYTES = 64 * 2**20  # a build that fails with less than this free on its disk failed for lack of space


def from_root(path: str | os.PathLike) -> Path:
    """``path`` as a setting means it: ``~`` expanded, a relative one taken from the repository's root (``make``
    runs there, while a notebook's kernel runs in ``notebooks/``), an absolute one as it is."""
    return (REPO_ROOT / Path(path).expanduser()).resolve()


def setting_path(name: str, default: str) -> Path:
    """The folder the setting ``name`` gives (:func:`from_root`); ``default`` (relative to the root) when unset."""
    return from_root(os.environ.get(name, "").strip() or default)


def models_dir() -> Path:
    """Exported and quantized models (``VLM_MODELS_DIR``, default ``<repo>/models``)."""
    return setting_path("VLM_MODELS_DIR", "models")


def cache_dir() -> Path:
    """Stand-ins, prefetched models, llama.cpp's sources (``VLM_CACHE``, default ``<repo>/cache``)."""
    return setting_path("VLM_CACHE", "cache")


def runs_dir() -> Path:
    """Executed notebooks and results of ``make run`` (``VLM_RUN_DIR``, default ``<repo>/runs/latest``)."""
    return setting_path("VLM_RUN_DIR", "runs/latest")


class NotWritableError(RuntimeError):
    """A folder can't be written (read-only disk, no permission); the message names it and the way out."""


class InsufficientDiskSpaceError(RuntimeError):
    """Not enough free disk for a step; the message says how much it needs and the way out."""


def _setting_for(dest: Path) -> str:
    """The setting that moves ``dest``: the course's folders, the Hugging Face cache, or temporary files."""
    import tempfile

    from huggingface_hub import constants

    for setting, root in (("VLM_MODELS_DIR", models_dir()), ("VLM_CACHE", cache_dir()),
                          ("HF_HOME", Path(constants.HF_HOME)), ("TMPDIR", Path(tempfile.gettempdir()))):
        if Path(dest).resolve().is_relative_to(root.resolve()):
            return setting
    return "VLM_MODELS_DIR or VLM_CACHE"


def disk_error(dest: Path, err: BaseException) -> RuntimeError | None:
    """The one-sentence error for a disk problem ``err`` while building ``dest`` (naming the file it names when
    that is elsewhere, e.g. in the Hugging Face cache); ``None`` for other errors."""
    code, text, elsewhere = getattr(err, "errno", None), str(err), getattr(err, "filename", None)
    if isinstance(elsewhere, str) and not Path(elsewhere).resolve().is_relative_to(Path(dest).resolve().parent):
        dest = Path(elsewhere)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text:
        return InsufficientDiskSpaceError(
            f"The disk ran full while writing {dest}; nothing half-written was kept. Free some space "
            f"(e.g. `make clean-models`) or set {_setting_for(dest)} to a folder on a larger disk, then run again.")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "Read-only file system" in text:
        reason = (os.strerror(code) if code else "read-only file system").lower()
        return NotWritableError(f"Cannot write to {dest} ({reason}): set {_setting_for(dest)} to a folder you can "
                                "write to, then run again.")
    return None


def record(folder: Path) -> dict | None:
    """The marker of a finished build in ``folder``, or ``None`` (none, or damaged)."""
    return read_json(Path(folder) / MARKER)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` when it is missing or damaged."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def problems(folder: Path, facts: dict | None = None, required: Iterable[str] = ()) -> list[str]:
    """Why ``folder`` is not a finished build of ``facts`` (empty list: it is): required files missing, no marker,
    files whose size changed since written, or facts (library versions, sources) that differ from now."""
    folder = Path(folder)
    if not folder.is_dir():
        return ["not built yet"]
    found = [f"missing {name}" for name in required if not (folder / name).is_file()]
    marker = record(folder)
    if marker is None:
        return found + [f"{MARKER} is missing or damaged"]
    for name, size in marker.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            found.append(f"{name} is missing (it was {size} bytes when written)")
        elif path.stat().st_size != size:
            found.append(f"{name} is {path.stat().st_size} bytes but was {size} bytes when written")
    for key, value in (facts or {}).items():
        if marker.get("facts", {}).get(key) != value:
            found.append(f"made with {key} {marker.get('facts', {}).get(key)}, this environment has {value}")
    return found


def is_built(folder: Path, facts: dict | None = None, required: Iterable[str] = (), quiet: bool = False) -> bool:
    """True (saying "Skipped", unless ``quiet``) when ``folder`` is a finished build of ``facts``."""
    if problems(folder, facts, required):
        return False
    if not quiet:
        print(f"Skipped: a complete build is already at {folder}")
    return True


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Hold ``<dest>.lock``, waiting (and saying so) while another process builds; put back ``<dest>.old`` if a
    rebuild died between its two renames."""
    from filelock import FileLock, Timeout

    lock = FileLock(dest.with_name(dest.name + ".lock"))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"Another process is building {dest}; waiting for it to finish, then using its result...",
                  flush=True)
            lock.acquire()
    except OSError as err:
        raise (disk_error(dest, err) or err) from None
    try:
        old = dest.with_name(dest.name + ".old")
        if old.exists() and dest.exists():
            shutil.rmtree(old, ignore_errors=True)
        elif old.exists():
            os.replace(old, dest)
            print(f"Restored {dest} from {old.name}, set aside by a rebuild that did not finish.")
        yield
    finally:
        lock.release()


def check_free_space(folder: Path, needed_bytes: int | None) -> None:
    """Say what a step writes and what is free; :class:`InsufficientDiskSpaceError` if it won't fit."""
    if not needed_bytes:
        return
    parent = Path(folder)
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    print(f"This step writes about {needed_bytes / 1e6:,.0f} MB; {free / 1e9:,.1f} GB free on {parent}.")
    if free < needed_bytes * 1.2:
        raise InsufficientDiskSpaceError(
            f"Not enough disk space for {folder}: it needs about {needed_bytes / 1e6:,.0f} MB and only "
            f"{free / 1e6:,.0f} MB are free; free some space (e.g. `make clean-models`) or set "
            f"{_setting_for(folder)} to a larger disk.")


def build(dest: Path, make: Callable[[Path], None], *, facts: dict | None = None, required: Iterable[str] = (),
          needed_bytes: int | None = None, force: bool = False, quiet: bool = False) -> Path:
    """``dest``, built now by ``make(empty_folder)`` unless it is a finished build of ``facts`` (or ``force``).

    A damaged or stale ``dest`` is named and rebuilt; a build that fails, or leaves a ``required`` file out, leaves
    nothing behind (an existing ``dest`` stays as it was). Disk errors become one sentence.
    """
    from helpers.machine import peak_memory

    dest, required = Path(dest), tuple(required)
    if not force and is_built(dest, facts, required, quiet):
        return dest
    with _locked(dest):
        if not force and is_built(dest, facts, required, quiet):  # another process finished it while we waited
            return dest
        found = problems(dest, facts, required)
        if dest.exists():
            print(f"Found an unusable folder at {dest} ({'; '.join(found) or 'rebuild requested'}); rebuilding it.")
        check_free_space(dest, needed_bytes)
        tmp, old = dest.with_name(dest.name + ".partial"), dest.with_name(dest.name + ".old")
        try:
            if tmp.exists():
                print(f"Removing {tmp}, left over from an interrupted run.")
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            with peak_memory() as cost:
                make(tmp)
            missing = [name for name in required if not (tmp / name).is_file()]
            if missing:
                raise RuntimeError(f"the build into {tmp} did not produce {', '.join(missing)}; nothing was moved "
                                   "into place")
            files = {f.relative_to(tmp).as_posix(): f.stat().st_size for f in sorted(tmp.rglob("*"))
                     if f.is_file() and f != tmp / MARKER}  # subfolders too (llama.cpp's converter has some)
            marker = {"facts": facts or {}, "files": files, **cost, "built": time.strftime("%Y-%m-%d %H:%M:%S")}
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        except BaseException as err:
            # A library that writes through C++ streams (OpenVINO's save_model) reports a full disk without an errno
            # ("basic_ios::clear: iostream error"): a disk with next to nothing free says it, before tmp is freed.
            full = isinstance(err, Exception) and shutil.disk_usage(tmp.parent).free < NEARLY_FULL_BYTES
            shutil.rmtree(tmp, ignore_errors=True)
            cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if full and not isinstance(err, OSError) else err
            problem = disk_error(dest, cause) if isinstance(cause, OSError) else None
            if problem is not None:
                raise problem from None
            raise
        if dest.exists():  # a rebuild: the old folder waits as <dest>.old until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    if not quiet:
        print(f"Built {dest} in {cost['seconds']} s (peak memory {cost['peak_rss_MB']:,} MB)")
    return dest
