"""Parquet export of a study, from what is on disk (works while it runs, after a crash).

Reads the ledger (and Optuna's storage for searches), builds one table of trials and one
of epochs with the schema of :mod:`study.schema`, and writes each atomically (a temporary
file renamed into place), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from study import schema
from study.ledger import FILENAME as LEDGER_FILE
from study.ledger import Ledger
from study.runner import read_meta
from wrf4cir.config import flatten


def optuna_index(study_dir: Path) -> dict[str, tuple[str, int, str]]:
    """Ray trial id -> (Optuna study name, trial number, state), latest entry winning."""
    db = study_dir / "optuna.db"
    if not db.is_file():
        return {}
    import optuna

    from study.search import storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(storage_url(str(study_dir)))
    out: dict[str, tuple[str, int, str]] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        st = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in st.get_trials(deepcopy=False):
            rid = t.user_attrs.get("ray_trial_id")
            if rid is not None:
                out[rid] = (summary.study_name, t.number, t.state.name)
    return out


def _ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value else None


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _config_value(value: Any, tp: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_string(tp) and not isinstance(value, str):
        return json.dumps(value, sort_keys=True)
    if pa.types.is_floating(tp):
        return float(value)
    return value


def build_tables(study_dir: str | Path) -> tuple[pa.Table, pa.Table]:
    """``(trials, epochs)`` arrow tables of a study, typed per :mod:`study.schema`."""
    study_dir = Path(study_dir).expanduser().resolve()
    meta = read_meta(study_dir)
    ledger = Ledger(study_dir / LEDGER_FILE, readonly=True)
    trials = ledger.trials()
    epochs = ledger.epochs()
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for row in epochs:
        by_trial.setdefault(row["trial_key"], []).append(row)
    names = {k for row in epochs for k, v in row.items()
             if k not in ("trial_key", "epoch") and _finite(v) is not None}
    metrics = schema.metric_order(names)
    optuna_ref = optuna_index(study_dir)
    cell_of = {t["trial_key"]: t.get("cell_id") for t in trials}
    cfg_cols = schema.config_columns()

    trial_rows = []
    for t in trials:
        rows = by_trial.get(t["trial_key"], [])
        last = rows[-1] if rows else {}
        scored = [r for r in rows if _finite(r.get(schema.BEST_BY)) is not None]
        best = max(scored, key=lambda r: r[schema.BEST_BY]) if scored else {}
        ref = optuna_ref.get(t["ray_trial_id"])
        res = t.get("resources") or {}
        row: dict[str, Any] = {
            "study": meta["name"], "trial_id": t["trial_key"], "run": t["run"],
            "cell_id": t.get("cell_id"), "cell": t.get("cell_label"),
            "repeat": t.get("repeat"), "status": t["status"], "error": t.get("error"),
            "epochs_done": len(rows), "max_epochs": t.get("max_epochs"),
            "failures": t.get("failures") or 0, "notes": t.get("notes"),
            "node": t.get("node"),
            "resources_cpu": _finite(res.get("cpu")), "resources_gpu": _finite(res.get("gpu")),
            "wall_time_s": _finite(t.get("wall_time_s")),
            "started": _ts(t.get("started")), "ended": _ts(t.get("ended")),
            "package_version": meta.get("wrf4cir_version"),
            "git_commit": meta.get("git_commit"),
            "optuna_study": ref[0] if ref else None,
            "optuna_number": ref[1] if ref else None,
            "optuna_state": ref[2] if ref else None,
            "best_epoch": best.get("epoch"),
            "search_params": json.dumps(t["params"], sort_keys=True) if t.get("params")
            else None,
        }
        flat = flatten(t["config"]) if t.get("config") else {}
        for col, tp in cfg_cols.items():
            row[col] = _config_value(flat.get(col[len(schema.CONFIG_PREFIX):]), tp)
        for m in metrics:
            row[schema.LAST_PREFIX + m] = _finite(last.get(m))
            row[schema.BEST_PREFIX + m] = _finite(best.get(m))
        trial_rows.append(row)

    epoch_rows = [{"study": meta["name"], "trial_id": r["trial_key"],
                   "cell_id": cell_of.get(r["trial_key"]), "epoch": r["epoch"],
                   **{m: _finite(r.get(m)) for m in metrics}} for r in epochs]
    trials_table = pa.Table.from_pylist(trial_rows, schema=schema.trials_schema(metrics))
    epochs_table = pa.Table.from_pylist(epoch_rows, schema=schema.epochs_schema(metrics))
    return trials_table, epochs_table


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def export_study(study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``trials.parquet`` and ``epochs.parquet`` (default: into the study folder)."""
    study_dir = Path(study_dir).expanduser().resolve()
    trials, epochs = build_tables(study_dir)
    out_dir = Path(out).expanduser().resolve() if out else study_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(trials, out_dir / "trials.parquet")
    _write_atomic(epochs, out_dir / "epochs.parquet")
    return out_dir


def status_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(schema.STATUSES, 0)
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts
