"""``make prefetch``: download the chosen Hub model once into ``cache/hub/`` so the series runs offline afterwards.

Copy ``cache/`` to other laptops (or point ``VLM_CACHE`` at it) and run with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import os
import sys

from helpers import atomic, synthetic
from helpers.models import DEFAULT_MODEL_ID, ModelUnavailableError, ensure_standin, hub_status, prefetched_path


def prefetch(repo_id: str) -> str:
    """Fetch ``repo_id`` (or build a stand-in) into the local cache; return the local folder."""
    if repo_id in synthetic.SPECS:
        return str(ensure_standin(repo_id))
    dest = prefetched_path(repo_id)
    if (dest / "config.json").is_file():
        print(f"Already prefetched: {dest}")
        return str(dest)
    status = hub_status(repo_id)
    if status != "ok":
        raise ModelUnavailableError(f"Cannot prefetch {repo_id!r}: {status}; run this where the Hub is reachable.")
    from huggingface_hub import snapshot_download

    with atomic.locked(dest):
        if (dest / "config.json").is_file():  # another process fetched it while this one waited
            return str(dest)
        with atomic.partial_folder(dest) as tmp:
            snapshot_download(repo_id, local_dir=tmp)  # shows download progress bars
    print(f"Prefetched {repo_id} into {dest}")
    return str(dest)


def main() -> int:
    repo_id = os.environ.get("VLM_MODEL", "").strip() or DEFAULT_MODEL_ID
    try:
        prefetch(repo_id)
    except ModelUnavailableError as err:
        print(err, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
