"""The parquet schema of a study export: the one definition of every column.

``trials.parquet``, one row per trial:

=======================  ===============  ===============================================
column                   type             meaning
=======================  ===============  ===============================================
study                    string           study name
trial_id                 string           ``<run>/<ray trial id>``, unique in the study
run                      string           ``run-000`` (``run``), ``run-001`` (first extend)
cell_id, cell            string           grid cell: stable id and readable label
repeat                   int64            repeat index (seed = base seed + repeat)
status                   string           completed | stopped_early | errored | running |
                                          pending
error                    string           why it errored (null otherwise)
epochs_done, max_epochs  int64            epochs reported / configured
failures                 int64            restarts after failures
notes                    string           what went wrong along the way, one line each
                                          (failed attempts and why, unreadable
                                          checkpoints skipped); null if nothing did
node                     string           host the trial last ran on
resources_cpu/gpu        float64          resources requested per trial
wall_time_s              float64          training wall time reported by Tune
started, ended           timestamp (UTC)
package_version          string           wrf4cir version of the driver
git_commit               string           source commit of the driver (null if unknown)
optuna_study             string           ``<study>/<cell id>`` (searches only)
optuna_number            int64            the trial's number in that Optuna study
optuna_state             string           COMPLETE | PRUNED | FAIL | RUNNING
best_epoch               int64            epoch with the best ``val/headline``
search_params            string           JSON of the values Optuna chose (searches)
config.<key>             typed            every leaf of the training config
                                          (``config.optim.lr``: float64, ...)
last.<metric>            float64          the last epoch's metrics (``last.val/headline``)
best.<metric>            float64          the metrics at ``best_epoch``
=======================  ===============  ===============================================

``epochs.parquet``, one row per (trial, epoch): ``study``, ``trial_id``, ``cell_id``,
``epoch`` (int64) and every reported metric as float64 (``val/R@10``, ``gap/headline``,
``time/second_pass``, ...).

Metric columns depend on the datasets' protocols (e.g. ``val/R@50``), so they are the
union over the study's trials; a trial without a metric has null there.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import pyarrow as pa

from wrf4cir.config import Config

TRIAL_FIXED: dict[str, pa.DataType] = {
    "study": pa.string(),
    "trial_id": pa.string(),
    "run": pa.string(),
    "cell_id": pa.string(),
    "cell": pa.string(),
    "repeat": pa.int64(),
    "status": pa.string(),
    "error": pa.string(),
    "epochs_done": pa.int64(),
    "max_epochs": pa.int64(),
    "failures": pa.int64(),
    "notes": pa.string(),
    "node": pa.string(),
    "resources_cpu": pa.float64(),
    "resources_gpu": pa.float64(),
    "wall_time_s": pa.float64(),
    "started": pa.timestamp("s", tz="UTC"),
    "ended": pa.timestamp("s", tz="UTC"),
    "package_version": pa.string(),
    "git_commit": pa.string(),
    "optuna_study": pa.string(),
    "optuna_number": pa.int64(),
    "optuna_state": pa.string(),
    "best_epoch": pa.int64(),
    "search_params": pa.string(),
}
EPOCH_FIXED: dict[str, pa.DataType] = {
    "study": pa.string(),
    "trial_id": pa.string(),
    "cell_id": pa.string(),
    "epoch": pa.int64(),
}
STATUSES = ("completed", "stopped_early", "errored", "running", "pending")
CONFIG_PREFIX, LAST_PREFIX, BEST_PREFIX = "config.", "last.", "best."
BEST_BY = "val/headline"  # the metric that picks best_epoch (higher is better)


def _arrow_type(tp: Any) -> pa.DataType:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _arrow_type(args[0]) if len(args) == 1 else pa.string()
    if origin is Literal or tp is str:
        return pa.string()
    if tp is bool:
        return pa.bool_()
    if tp is int:
        return pa.int64()
    if tp is float:
        return pa.float64()
    if origin in (list, tuple):
        return pa.list_(_arrow_type(get_args(tp)[0]))
    return pa.string()  # free-form mappings (data.recipe) as JSON text


def config_columns() -> dict[str, pa.DataType]:
    """``config.<dotted key>`` -> arrow type, from the Config dataclasses' field types."""
    out: dict[str, pa.DataType] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            else:
                out[f"{CONFIG_PREFIX}{prefix}{f.name}"] = _arrow_type(tp)

    walk(Config, "")
    return out


def trials_schema(metrics: list[str]) -> pa.Schema:
    """The schema of ``trials.parquet`` for a study whose trials reported ``metrics``."""
    fields = [pa.field(k, t) for k, t in TRIAL_FIXED.items()]
    fields += [pa.field(k, t) for k, t in config_columns().items()]
    fields += [pa.field(f"{LAST_PREFIX}{m}", pa.float64()) for m in metrics]
    fields += [pa.field(f"{BEST_PREFIX}{m}", pa.float64()) for m in metrics]
    return pa.schema(fields)


def epochs_schema(metrics: list[str]) -> pa.Schema:
    """The schema of ``epochs.parquet``."""
    return pa.schema([pa.field(k, t) for k, t in EPOCH_FIXED.items()]
                     + [pa.field(m, pa.float64()) for m in metrics])


def metric_order(names: set[str]) -> list[str]:
    """Metric columns in a stable, readable order: by family, then name."""
    families = ("train/", "val/", "probe/", "gap/", "sharpness/", "time/")

    def key(n: str) -> tuple[int, str]:
        fam = next((i for i, f in enumerate(families) if n.startswith(f)), len(families))
        return fam, n

    return sorted(names, key=key)
