"""Training checkpoints: explicit dicts, atomic writes, safe loads.

Layout under a run directory::

    checkpoints/epoch-0003/checkpoint.pt
    checkpoints/epoch-0003/meta.json     {"epoch": 3, "step": 36}: readable without torch

One directory per checkpoint (the study layer hands such a directory to Ray as a
``tune.Checkpoint``). A checkpoint is written to a temporary directory and renamed into
place, so a crash leaves either the old state or the new one, never half a file. Loading
uses ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILENAME = "checkpoint.pt"
META = "meta.json"
_DIR_RE = re.compile(r"^epoch-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (truncated, corrupt, wrong format)."""


def rng_state() -> dict[str, Any]:
    """Every RNG a training run draws from, in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].copy()), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy(), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(obj: Any) -> Any:
    # random.setstate wants tuples; a round trip through some serializers yields lists
    return tuple(_tuplify(x) for x in obj) if isinstance(obj, list | tuple) else obj


def save_checkpoint(state: dict[str, Any], directory: str | Path) -> Path:
    """Write ``state`` as ``directory/checkpoint.pt`` atomically; returns the directory.

    If ``directory`` exists it is replaced (also atomically, by rename).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    state = {"format_version": FORMAT_VERSION, **state}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        with open(tmp / FILENAME, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        summary = {k: state[k] for k in ("epoch", "step") if isinstance(state.get(k), int)}
        (tmp / META).write_text(json.dumps(summary) + "\n")
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file or directory; raises :class:`CheckpointError` if unreadable."""
    path = Path(path)
    file = path / FILENAME if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"{file}: no checkpoint there")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError,
            ValueError) as exc:
        raise CheckpointError(f"{file}: unreadable checkpoint "
                              f"({exc.__class__.__name__}: {str(exc)[:120]})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{file}: not a wrf4cir checkpoint of format {FORMAT_VERSION}")
    return state


def checkpoint_epoch(directory: str | Path) -> int | None:
    """The epoch a checkpoint directory was saved after (from its meta.json), if known."""
    try:
        return int(json.loads((Path(directory) / META).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoint_dir(root: str | Path, epoch: int) -> Path:
    """Where the checkpoint after ``epoch`` (1-based) goes under ``root``."""
    return Path(root) / f"epoch-{epoch:04d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _DIR_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest(root: str | Path, map_location: str | torch.device = "cpu"
                ) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint under ``root``, skipping (and reporting) broken ones."""
    for directory in reversed(list_checkpoints(root)):
        try:
            return directory, load_checkpoint(directory, map_location)
        except CheckpointError as exc:
            log.warning("skipping %s; falling back to an older checkpoint", exc)
    return None


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoint directories under ``root``."""
    for directory in list_checkpoints(root)[:-keep]:
        shutil.rmtree(directory, ignore_errors=True)
