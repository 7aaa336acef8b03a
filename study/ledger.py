"""The study ledger: what every trial is, did and reported, in one SQLite file.

The driver writes it (through :class:`study.callbacks.LedgerCallback`) as Ray Tune runs;
``status`` and ``export`` only read it, so they work on a running, crashed or finished
study. Epoch rows are keyed by ``(trial_key, epoch)`` and upserted: an epoch re-run after a
resume replaces its row, so each (trial, epoch) is stored exactly once; when a restarted
attempt reports first, the rows past the checkpoint it continues from are dropped.

Tables::

    trials(trial_key PK, run, ray_trial_id, cell_id, cell_label, repeat, params_json,
           config_json, status, ray_status, error, epochs_done, max_epochs, failures,
           node, resources_json, started, ended, wall_time_s, optuna_study, optuna_number,
           notes, updated)
    epochs(trial_key, epoch, metrics_json, reported, PRIMARY KEY (trial_key, epoch))
    meta(key PK, value_json)

``status`` is what really happened (the values are ``study.schema.STATUSES``):
``pending``, ``running``, ``completed`` (all epochs), ``stopped_early`` (the scheduler
ended it), ``errored`` (out of retries, or diverged). ``notes`` is the trial's history of
mishaps, one line each (a failed attempt and its reason, a checkpoint it could not read).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FILENAME = "ledger.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    trial_key TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    ray_trial_id TEXT NOT NULL,
    cell_id TEXT,
    cell_label TEXT,
    repeat INTEGER,
    params_json TEXT,
    config_json TEXT,
    status TEXT NOT NULL,
    ray_status TEXT,
    error TEXT,
    epochs_done INTEGER DEFAULT 0,
    max_epochs INTEGER,
    failures INTEGER DEFAULT 0,
    node TEXT,
    resources_json TEXT,
    started REAL,
    ended REAL,
    wall_time_s REAL,
    optuna_study TEXT,
    optuna_number INTEGER,
    notes TEXT,
    updated REAL
);
CREATE TABLE IF NOT EXISTS epochs (
    trial_key TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    metrics_json TEXT NOT NULL,
    reported REAL,
    PRIMARY KEY (trial_key, epoch)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value_json TEXT NOT NULL);
"""

# columns added after the first release: (name, type), added to older ledgers on open
_ADDED_COLUMNS = {"notes": "TEXT"}

_TRIAL_COLUMNS = ("run", "ray_trial_id", "cell_id", "cell_label", "repeat", "params_json",
                  "config_json", "status", "ray_status", "error", "epochs_done", "max_epochs",
                  "failures", "node", "resources_json", "started", "ended", "wall_time_s",
                  "optuna_study", "optuna_number")


class Ledger:
    """Read/write access to one study's ledger file."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no study ledger here")
        self.readonly = readonly
        if not readonly:
            with self._connect() as con:
                con.executescript(_SCHEMA)
                have = {r["name"] for r in con.execute("PRAGMA table_info(trials)")}
                for column, sql_type in _ADDED_COLUMNS.items():
                    if column not in have:  # a ledger written by an older version
                        con.execute(f"ALTER TABLE trials ADD COLUMN {column} {sql_type}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        else:
            con = sqlite3.connect(self.path, timeout=30)
            con.execute("PRAGMA journal_mode=WAL")  # readers never block the driver
        con.row_factory = sqlite3.Row
        try:
            yield con
            con.commit()
        finally:
            con.close()

    # -- writing ---------------------------------------------------------------------------
    def upsert_trial(self, trial_key: str, **fields: Any) -> None:
        """Create the trial's row if new (as ``pending``), then set the given fields.

        ``trial_key`` is ``"<run>/<ray trial id>"``.
        """
        unknown = set(fields) - set(_TRIAL_COLUMNS)
        if unknown:
            raise KeyError(f"unknown trial fields {sorted(unknown)}")
        run, _, ray_id = trial_key.partition("/")
        values = {k: _encode(k, v) for k, v in fields.items()}
        values["updated"] = time.time()
        with self._connect() as con:
            con.execute("INSERT OR IGNORE INTO trials (trial_key, run, ray_trial_id, status) "
                        "VALUES (?, ?, ?, 'pending')", (trial_key, run, ray_id))
            sets = ", ".join(f"{k}=?" for k in values)
            con.execute(f"UPDATE trials SET {sets} WHERE trial_key=?",
                        (*values.values(), trial_key))

    def add_note(self, trial_key: str, text: str) -> None:
        """Append one line (with its UTC time) to the trial's ``notes``."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = f"{stamp} {' '.join(text.split())}"
        self.upsert_trial(trial_key)
        with self._connect() as con:
            con.execute("UPDATE trials SET notes = COALESCE(notes || char(10), '') || ? "
                        "WHERE trial_key=?", (line, trial_key))

    def record_epoch(self, trial_key: str, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Store one epoch's metrics (replacing an earlier report of the same epoch)."""
        with self._connect() as con:
            con.execute("INSERT INTO epochs (trial_key, epoch, metrics_json, reported) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT(trial_key, epoch) DO UPDATE SET "
                        "metrics_json=excluded.metrics_json, reported=excluded.reported",
                        (trial_key, int(epoch), json.dumps(_jsonable(metrics)), time.time()))

    def forget_epochs_after(self, trial_key: str, epoch: int) -> None:
        """Delete the trial's epochs after ``epoch`` (a restart continues from there)."""
        with self._connect() as con:
            con.execute("DELETE FROM epochs WHERE trial_key=? AND epoch>?", (trial_key, epoch))

    def forget_trial(self, trial_key: str) -> None:
        """Delete one trial and its epochs (an attempt Tune no longer knows of)."""
        with self._connect() as con:
            con.execute("DELETE FROM epochs WHERE trial_key=?", (trial_key,))
            con.execute("DELETE FROM trials WHERE trial_key=?", (trial_key,))

    def forget_run(self, run: str) -> None:
        """Delete a run's trials and epochs (an attempt that Tune cannot restore)."""
        with self._connect() as con:
            con.execute("DELETE FROM epochs WHERE trial_key LIKE ?", (f"{run}/%",))
            con.execute("DELETE FROM trials WHERE run=?", (run,))

    def set_meta(self, key: str, value: Any) -> None:
        with self._connect() as con:
            con.execute("INSERT INTO meta (key, value_json) VALUES (?, ?) ON CONFLICT(key) "
                        "DO UPDATE SET value_json=excluded.value_json", (key, json.dumps(value)))

    # -- reading ---------------------------------------------------------------------------
    def trials(self) -> list[dict[str, Any]]:
        """Every trial row, decoded (``params``, ``config``, ``resources`` as dicts)."""
        with self._connect() as con:
            rows = con.execute("SELECT * FROM trials ORDER BY run, ray_trial_id").fetchall()
        return [_decode(dict(r)) for r in rows]

    def epochs(self) -> list[dict[str, Any]]:
        """Every epoch row as ``{"trial_key", "epoch", **metrics}``, ordered."""
        with self._connect() as con:
            rows = con.execute("SELECT trial_key, epoch, metrics_json FROM epochs "
                               "ORDER BY trial_key, epoch").fetchall()
        return [{"trial_key": r["trial_key"], "epoch": r["epoch"],
                 **json.loads(r["metrics_json"])} for r in rows]

    def meta(self, key: str, default: Any = None) -> Any:
        with self._connect() as con:
            row = con.execute("SELECT value_json FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row["value_json"]) if row else default


def _encode(key: str, value: Any) -> Any:
    if key.endswith("_json") and not isinstance(value, str | None):
        return json.dumps(_jsonable(value), sort_keys=True)
    return value


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in [k for k in row if k.endswith("_json")]:
        raw = row.pop(key)
        row[key[: -len("_json")]] = json.loads(raw) if raw else None
    return row


def _jsonable(obj: Any) -> Any:
    """Plain JSON values; NaN/inf become None (JSON has no such numbers)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, int | str | bool) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return _jsonable(obj.item())
    return str(obj)
