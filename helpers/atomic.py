"""Folders that appear all at once and are built by one process at a time (exports, variants, stand-ins).

:func:`locked` holds ``<name>.lock`` (``filelock``) for the whole build; :func:`partial_folder` builds into
``<name>.partial`` and renames it into place, keeping an existing folder as ``<name>.old`` until then.
Disk errors become one sentence naming the setting that moves the folder. The README explains the design.
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
    setting = _setting_for(dest)
    if code in _FULL or "No space left on device" in str(err):
        return InsufficientDiskSpaceError(
            f"The disk ran full while writing {dest}; nothing half-written was kept. Free some space "
            f"(e.g. `make clean-models`) or set {setting} to a folder on a larger disk, then run again."
        )
    if code in _READ_ONLY or "Read-only file system" in str(err):
        reason = os.strerror(code) if code else "read-only file system"
        return NotWritableError(
            f"Cannot write to {dest} ({reason.lower()}): set {setting} to a folder you can write to, then run again."
        )
    return None


@contextmanager
def locked(dest: Path) -> Iterator[None]:
    """Hold the build lock of folder ``dest``, waiting (and saying so) while another process holds it; then put
    back ``<dest>.old`` if a rebuild died between its two renames."""
    from filelock import FileLock, Timeout

    dest = Path(dest)
    lock = FileLock(_sibling(dest, ".lock"))
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
        old = _sibling(dest, ".old")
        if old.exists() and dest.exists():
            shutil.rmtree(old, ignore_errors=True)
        elif old.exists():
            os.replace(old, dest)
            print(f"Restored {dest} from {old.name}, set aside by a rebuild that did not finish.")
        yield
    finally:
        lock.release()


@contextmanager
def partial_folder(dest: Path) -> Iterator[Path]:
    """Yield an empty ``<dest>.partial`` to build into; on success move it to ``dest``, on failure remove it.

    Use with the lock held (:func:`locked`), so a ``.partial`` found here is a dead process's leftover.
    """
    dest = Path(dest)
    tmp, old = _sibling(dest, ".partial"), _sibling(dest, ".old")
    try:
        if tmp.exists():
            print(f"Removing {tmp}, left over from an interrupted run.")
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    except OSError as err:
        raise (disk_error(dest, err) or err) from None
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        problem = disk_error(dest, err) if isinstance(err, Exception) else None
        if problem is not None:
            raise problem from None
        raise
    if dest.exists():  # a rebuild: the old folder waits as <dest>.old until the new one is in place
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def read_record(path: Path) -> dict | None:
    """The JSON object in ``path`` (a folder's completion marker), or ``None`` when it is missing or damaged."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def file_sizes(folder: Path) -> dict[str, int]:
    """``{file name: bytes}`` of the files directly in ``folder``, as completion markers record them."""
    return {f.name: f.stat().st_size for f in sorted(Path(folder).iterdir()) if f.is_file()}


def changed_files(folder: Path, sizes: dict[str, int]) -> list[str]:
    """What differs between ``folder`` and the ``sizes`` recorded when it was written (empty list: nothing)."""
    found = []
    for name, size in sizes.items():
        path = Path(folder) / name
        if not path.is_file():
            found.append(f"{name} is missing (it was {size} bytes when written)")
        elif path.stat().st_size != size:
            found.append(f"{name} is {path.stat().st_size} bytes but was {size} bytes when written")
    return found


def check_free_space(folder: Path, needed_bytes: int | None) -> None:
    """Print the disk a step needs and what is free; raise :class:`InsufficientDiskSpaceError` if it won't fit."""
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
