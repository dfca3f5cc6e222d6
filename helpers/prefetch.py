"""``make prefetch``: download the chosen Hub model once into ``cache/hub/`` so the series runs offline afterwards.

Copy ``cache/`` to other laptops (or point ``VLM_CACHE`` at it) and run with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import os
import sys

from helpers import models, standins, store


def prefetch(repo_id: str) -> str:
    """Fetch ``repo_id`` (or build a stand-in) into the local cache; return the local folder."""
    if repo_id in standins.SPECS:
        return str(standins.build(repo_id, models.standin_path(repo_id)))
    dest = models.prefetched_path(repo_id)
    if not store.problems(dest, required=["config.json"]):
        print(f"Already prefetched: {dest}")
        return str(dest)
    status = models.hub_status(repo_id)
    if status != "ok":
        raise models.ModelUnavailableError(f"Cannot prefetch {repo_id!r}: {status}; run this where the Hub is "
                                           "reachable.")
    from huggingface_hub import snapshot_download

    store.build(dest, lambda folder: snapshot_download(repo_id, local_dir=folder), required=["config.json"])
    return str(dest)


def main() -> int:
    try:
        prefetch(os.environ.get("VLM_MODEL", "").strip() or models.DEFAULT_MODEL_ID)
    except models.ModelUnavailableError as err:
        print(err, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
