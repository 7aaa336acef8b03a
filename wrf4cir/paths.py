"""Where wrf4cir keeps generated data and pre-trained checkpoints between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$WRF4CIR_CACHE`` if set, else ``~/.cache/wrf4cir``.

    Holds generated synthetic datasets (``data/``) and the offline pre-trained tiny
    backbones (``pretrained/``). Safe to delete: everything in it is regenerated on demand.
    """
    env = os.environ.get("WRF4CIR_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "wrf4cir"
    return root.expanduser().resolve()
