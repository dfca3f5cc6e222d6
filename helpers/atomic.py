"""Folders that appear all at once and are built by one process at a time (exports, variants, stand-ins).

Two notebooks open at once, or ``make run`` while JupyterLab is open, may ask for the same model folder. So:

- :func:`locked` holds a lock file next to the folder (``<name>.lock``, with the ``filelock`` package) for the
  whole build; a second process waits, says so, and then reuses what the first one built. The operating system
  releases the lock when its process dies, so a killed build never blocks the next one.
- :func:`partial_folder` gives the build an empty ``<name>.partial`` folder (removed again if the build fails).
  Only the lock holder calls it, so a ``.partial`` it finds is a leftover of a process that died, never a live
  build. When the build is done, :func:`publish` moves the finished folder into place. An existing folder (a
  rebuild with ``force=True``) is kept as ``<name>.old`` until the new one is in place, so a kill at any moment
  leaves a usable copy; :func:`recover` puts it back if a process died between the two renames.
- Errors of the disk (read-only, full, no permission) become one sentence naming the folder and the setting
  that moves it (:class:`NotWritableError`, :class:`InsufficientDiskSpaceError`).

Written by hand for the renames: ``filelock`` gives the lock, no library we install swaps folders.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"
LOCK_SUFFIX = ".lock"

_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


class NotWritableError(RuntimeError):
    """A folder can't be written (read-only disk, no permission); the message names it and the way out."""


class InsufficientDiskSpaceError(RuntimeError):
    """Not enough free disk for a step; the message says how much it needs and the way out."""


def _sibling(dest: Path, suffix: str) -> Path:
    return dest.with_name(dest.name + suffix)


def _setting_for(dest: Path) -> str:
    """The environment variable that moves ``dest`` elsewhere (for error messages)."""
    from helpers.paths import cache_dir, models_dir

    for setting, root in (("VLM_MODELS_DIR", models_dir()), ("VLM_CACHE", cache_dir())):
        if Path(dest).resolve().is_relative_to(root):
            return setting
    return "VLM_MODELS_DIR or VLM_CACHE"


def disk_error(dest: Path, err: BaseException) -> RuntimeError | None:
    """The one-sentence error for a disk problem ``err`` while writing ``dest``, or ``None`` for other errors."""
    code = getattr(err, "errno", None)
    text = str(err)
    setting = _setting_for(dest)
    if code in _FULL or "No space left on device" in text:
        return InsufficientDiskSpaceError(
            f"The disk ran full while writing {dest}; nothing half-written was kept. Free some space "
            f"(e.g. `make clean-models`) or set {setting} to a folder on a larger disk, then run again."
        )
    if code in _READ_ONLY or "Read-only file system" in text:
        reason = os.strerror(code) if code else "read-only file system"
        return NotWritableError(
            f"Cannot write to {dest} ({reason.lower()}): set {setting} to a folder you can write to, then run again."
        )
    return None


@contextmanager
def locked(dest: Path) -> Iterator[None]:
    """Hold the build lock of folder ``dest``; if another process holds it, say so and wait for it. A folder
    that a dead process had set aside is put back first (:func:`recover`)."""
    from filelock import FileLock, Timeout

    dest = Path(dest)
    lock = FileLock(_sibling(dest, LOCK_SUFFIX))
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
        recover(dest)
        yield
    finally:
        lock.release()


def recover(dest: Path) -> None:
    """Put back ``<dest>.old`` when a process died after moving it aside and before the new folder was in place;
    remove it when ``dest`` is there. Call with the lock held."""
    dest = Path(dest)
    old = _sibling(dest, OLD_SUFFIX)
    if not old.exists():
        return
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(old, dest)
        print(f"Restored {dest} from {old.name}, set aside by a rebuild that did not finish.")


def _fresh_partial(dest: Path) -> Path:
    """An empty ``<dest>.partial`` folder to build into (a leftover of a dead process is removed, and said so).
    Call with the lock held."""
    dest = Path(dest)
    tmp = _sibling(dest, PARTIAL_SUFFIX)
    try:
        if tmp.exists():
            print(f"Removing {tmp}, left over from an interrupted run.")
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    except OSError as err:
        raise (disk_error(dest, err) or err) from None
    return tmp


def publish(tmp: Path, dest: Path) -> Path:
    """Move the finished folder ``tmp`` to ``dest``; an existing ``dest`` is replaced only once ``tmp`` is in
    place (it waits as ``<dest>.old`` in between). Call with the lock held."""
    tmp, dest = Path(tmp), Path(dest)
    old = _sibling(dest, OLD_SUFFIX)
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


@contextmanager
def partial_folder(dest: Path) -> Iterator[Path]:
    """Yield an empty ``<dest>.partial`` folder to build into; when the block ends without error, move it to
    ``dest`` (:func:`publish`); when it fails, remove it (nothing half-written stays behind) and turn a disk
    error into one sentence (:func:`disk_error`). Use with the lock held (:func:`locked`)."""
    tmp = _fresh_partial(dest)
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        problem = disk_error(dest, err) if isinstance(err, Exception) else None
        if problem is not None:
            raise problem from None
        raise
    publish(tmp, dest)


def read_record(path: Path) -> dict | None:
    """The JSON object in ``path`` (a folder's completion marker), or ``None`` when it is missing or damaged."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def check_free_space(folder: Path, needed_bytes: int | None) -> None:
    """Say how much disk a step needs and how much is free; raise :class:`InsufficientDiskSpaceError` if it
    clearly won't fit."""
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
            f"{_setting_for(folder)} to a larger disk."
        )
