"""Shared fixtures: every test session gets its own cache (generated data, checkpoints)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from wrf4cir.config import Config


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    old = os.environ.get("WRF4CIR_CACHE")
    os.environ["WRF4CIR_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("WRF4CIR_CACHE", None)
    else:
        os.environ["WRF4CIR_CACHE"] = old


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# small enough for a fit in a few seconds on 2 CPU cores
TINY_RECIPE = {"train_triplets": 64, "val_triplets": 24}


def tiny_config(out_dir: Path, **sections: dict) -> Config:
    """A config that fits in seconds: random init, tiny synthetic data, 2 epochs."""
    data: dict = {
        "model": {"pretrained": None},
        "data": {"name": "synthetic-shapes", "recipe": dict(TINY_RECIPE)},
        "optim": {"epochs": 2, "batch_size": 8, "lr": 1e-3},
        "eval": {"batch_size": 64},
        "run": {"out_dir": str(out_dir), "progress": False},
    }
    for key, values in sections.items():
        data.setdefault(key, {}).update(values)
    return Config.from_dict(data)
