"""Study-layer fixtures: one real local Ray instance per test module, tiny specs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.conftest import TINY_RECIPE

TINY_BASE: dict[str, Any] = {
    "model": {"name": "wrf-tiny-rn", "pretrained": None},
    "data": {"name": "synthetic-shapes", "recipe": dict(TINY_RECIPE)},
    "optim": {"epochs": 2, "batch_size": 8, "lr": 1e-3},
    "eval": {"batch_size": 64},
}


def tiny_spec(name: str = "tiny", **overrides: Any) -> dict[str, Any]:
    """A spec whose trials take a few seconds each on one CPU."""
    spec: dict[str, Any] = {"name": name, "base": copy.deepcopy(TINY_BASE),
                            "grid": {"perturb.radius": [0.0, 1e-2]},
                            "resources": {"cpu": 1}}
    spec.update(copy.deepcopy(overrides))
    return spec


def read_export(study_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A study's exported ``(trials.parquet, epochs.parquet)``."""
    return (pd.read_parquet(study_dir / "trials.parquet"),
            pd.read_parquet(study_dir / "epochs.parquet"))


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def local_ray():
    """A real Ray instance (2 CPUs) shared by a module's tests, shut down afterwards."""
    import ray

    from study.runner import init_ray

    init_ray(None, ship_code=False, verbose=0)
    yield ray
    ray.shutdown()
