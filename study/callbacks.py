"""Driver-side Tune callbacks: the ledger writer and the compact progress line."""

from __future__ import annotations

import logging
import math
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ray import tune

from study.ledger import Ledger
from study.runner import free_bytes
from study.spec import parse_spec
from study.trainable import CELL, PARAMS, REPEAT, tune_checkpoints

log = logging.getLogger(__name__)

# what a trial reports that is ours (Ray adds its own keys: time_total_s, config, ...)
METRIC_PREFIXES = ("train/", "val/", "probe/", "gap/", "time/", "sharpness/", "trial/")
_RAY_TO_STATUS = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "running"}


def error_text(trial: Any) -> str | None:
    """The last line of a trial's latest error (the exception), where Tune left it.

    Tune writes the error file on the driver's staging copy first and syncs it to storage
    later, so read the local file before asking storage.
    """
    path = getattr(trial, "error_file", None)
    try:
        if path and Path(path).is_file():
            return _last_line(Path(path).read_text())
    except OSError:
        pass
    try:
        return _last_line(trial.get_error())
    except Exception:  # noqa: BLE001 - no error text is no reason to fail the study
        return None


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b[^:]*:")
_DETAIL_LINE = re.compile(r"^\s+\w+: \S+$")  # Ray's "\tpid: 123" lines under an error


def _last_line(text: str | None) -> str | None:
    """The last exception of a traceback as one line, with what Ray says under it."""
    if not text:
        return None
    lines = [ln.rstrip() for ln in str(text).strip().splitlines() if ln.strip()]
    if not lines:
        return None
    # Tune's error.txt heads each failure with "Failure # 2 (occurred at ...)"
    starts = [i + ln.startswith("Failure #") for i, ln in enumerate(lines)
              if _EXCEPTION_LINE.match(ln) or ln.startswith("Failure #")]
    tail = (lines[starts[-1]:] if starts else []) or lines[-1:]
    summary = " ".join(ln.strip() for ln in tail if not _DETAIL_LINE.match(ln))
    # Ray follows a dead worker's reason with a paragraph of generic advice
    return summary.split(" Some common causes include")[0][:1000]


def judge(result: dict[str, Any] | None) -> tuple[str, str | None]:
    """``(status, error)`` of a trial that ended without raising, from its last result."""
    if not result:
        return "errored", "ended without reporting a result"
    if result.get("diverged"):
        return "errored", str(result.get("error") or "diverged")
    if result.get("epoch", 0) < result.get("max_epochs", 0):
        return "stopped_early", None
    return "completed", None


class LedgerCallback(tune.Callback):
    """Writes every trial's identity, status and per-epoch metrics to the study ledger."""

    def __init__(self, study_dir: str, run_id: str, spec_data: dict[str, Any]) -> None:
        self.study_dir = study_dir
        self.run_id = run_id
        self.spec_data = spec_data
        self._known: dict[str, str] = {}  # trial id -> last ray status written
        self._ledger: Ledger | None = None
        self._study = None

    def __getstate__(self) -> dict[str, Any]:
        # pickled into Tune's experiment state: keep plain data only
        return {"study_dir": self.study_dir, "run_id": self.run_id,
                "spec_data": self.spec_data}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(Path(self.study_dir) / "ledger.sqlite")
        return self._ledger

    def key(self, trial: Any) -> str:
        return f"{self.run_id}/{trial.trial_id}"

    def _register(self, trial: Any) -> None:
        if trial.trial_id in self._known:
            return
        if self._study is None:  # names were checked at launch; nothing local to check
            self._study = parse_spec(self.spec_data, check_local=False)
        params = trial.config or {}
        cell_id = params.get(CELL)
        fields: dict[str, Any] = {"run": self.run_id, "ray_trial_id": trial.trial_id}
        if cell_id is not None:
            cell = self._study.cell(cell_id)
            repeat = int(params.get(REPEAT, 0))
            fields.update(cell_id=cell_id, cell_label=cell.label, repeat=repeat,
                          params_json=params.get(PARAMS) or {},
                          config_json=self._study.config_dict(cell, repeat,
                                                              params.get(PARAMS) or {}),
                          resources_json=self._study.spec.resources.model_dump())
            epochs = fields["config_json"].get("optim", {}).get("epochs")
            if epochs is not None:
                fields["max_epochs"] = int(epochs)
        self.ledger.upsert_trial(self.key(trial), **fields)
        self._known[trial.trial_id] = ""

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        for trial in trials:
            self._register(trial)
            status = _RAY_TO_STATUS.get(trial.status)
            if status and self._known.get(trial.trial_id) != trial.status:
                self.ledger.upsert_trial(self.key(trial), status=status,
                                         ray_status=trial.status)
                self._known[trial.trial_id] = trial.status

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._register(trial)
        self.ledger.upsert_trial(self.key(trial), status="running", ray_status="RUNNING",
                                 started=time.time())
        self._known[trial.trial_id] = "RUNNING"

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        self._register(trial)
        if result.get("note"):  # e.g. it resumed from an older checkpoint than Tune's
            self.ledger.add_note(self.key(trial), str(result["note"]))
        if result.get("iterations_since_restore") == 1:
            # a new attempt: epochs an abandoned attempt reported past the checkpoint this
            # one continues from are not part of the trial's history any more
            start = int(result.get("trial/resumed_from") or 0)
            self.ledger.forget_epochs_after(self.key(trial), start)
            self.ledger.upsert_trial(self.key(trial), epochs_done=start)
        if result.get("diverged"):
            return  # the trial ends with this report; on_trial_complete records why
        epoch = result.get("epoch")
        if epoch is None or not math.isfinite(float(epoch)):
            return
        metrics = {k: v for k, v in result.items()
                   if k.startswith(METRIC_PREFIXES) or k in ("epoch", "step", "lr",
                                                              "logit_scale")}
        self.ledger.record_epoch(self.key(trial), int(epoch), metrics)
        self.ledger.upsert_trial(self.key(trial), epochs_done=int(epoch),
                                 node=result.get("hostname") or result.get("node_ip"),
                                 wall_time_s=result.get("time_total_s"))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self._register(trial)
        status, error = judge(trial.last_result)
        self.ledger.upsert_trial(self.key(trial), status=status, error=error,
                                 ray_status=trial.status, ended=time.time())
        self._known[trial.trial_id] = trial.status
        if status != "errored" and not self._study.spec.checkpoint.keep_finished:
            drop_checkpoints(trial)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        self._register(trial)
        error = error_text(trial)
        self.ledger.upsert_trial(self.key(trial), status="running",
                                 failures=int(trial.num_failures), error=error)
        self.ledger.add_note(self.key(trial), f"attempt {trial.num_failures} failed: "
                             f"{error or 'no reason left'}; retrying from its last checkpoint")

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Reconcile with the trials Tune ended with.

        A driver killed between creating a trial and saving its own state leaves a ledger
        row for a trial the restored experiment never heard of (it makes a new one instead):
        that row is an abandoned attempt, not a trial, and is dropped.
        """
        known = {t.trial_id for t in trials}
        for row in self.ledger.trials():
            if (row["run"] == self.run_id and row["status"] in ("running", "pending")
                    and row["ray_trial_id"] not in known):
                self.ledger.forget_trial(row["trial_key"])

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._register(trial)
        error = error_text(trial) or "errored (no error text left)"
        self.ledger.upsert_trial(self.key(trial), status="errored",
                                 failures=int(trial.num_failures), ray_status=trial.status,
                                 error=error, ended=time.time())
        self.ledger.add_note(self.key(trial), f"attempt {trial.num_failures} failed: {error}; "
                             "no retries left (failure.max_failures)")
        self._known[trial.trial_id] = trial.status


class StorageGuard(tune.Callback):
    """Stops the study, like Ctrl-C, when its folder's disk runs low.

    Every ``every_s`` seconds it checks the free space under ``study_dir`` (the driver's
    disk: ledger, Optuna database and, for local storage, the checkpoints; workers' own
    disks are not watched). Below ``min_free_gb`` it logs why and interrupts the driver
    the way Tune's SIGUSR1 does (save the experiment state, then stop), which leaves the
    unfinished trials to ``wrf4cir-study resume`` once there is room again; each continues
    from its last checkpoint. ``min_free_gb`` 0 turns it off.
    """

    # set by `resume` before Tune unpickles a saved run's guard: the resuming driver's limit
    restored_min_free_gb: float | None = None

    def __init__(self, study_dir: str, min_free_gb: float, every_s: float = 5.0) -> None:
        self.study_dir, self.min_free_gb, self.every_s = study_dir, min_free_gb, every_s
        self._last = 0.0
        self.tripped = False

    def __getstate__(self) -> dict[str, Any]:
        # saved with the Tuner (tuner.pkl), which `resume` loads: plain data only
        return {"study_dir": self.study_dir, "min_free_gb": self.min_free_gb,
                "every_s": self.every_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if StorageGuard.restored_min_free_gb is not None:
            state = {**state, "min_free_gb": StorageGuard.restored_min_free_gb}
        self.__init__(**state)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if self.tripped or self.min_free_gb <= 0 or now - self._last < self.every_s:
            return
        self._last = now
        free = free_bytes(Path(self.study_dir))
        if free >= self.min_free_gb * 2**30:
            return
        self.tripped = True
        log.error("%s: only %.2f GiB free, below --min-free-gb %g: stopping the study before "
                  "a write fails. Free some space, then `wrf4cir-study resume %s`",
                  self.study_dir, free / 2**30, self.min_free_gb, self.study_dir)
        # Tune installs a SIGUSR1 handler (save, then stop) on the driver's main thread;
        # without it SIGUSR1 would kill the driver outright, so never send it blind
        usr1 = getattr(signal, "SIGUSR1", None)
        if (usr1 is not None and threading.current_thread() is threading.main_thread()
                and callable(signal.getsignal(usr1))):
            signal.raise_signal(usr1)
        else:
            log.error("cannot interrupt this driver from here (not Tune's main thread): "
                      "stop it yourself before the disk fills")


def drop_checkpoints(trial: Any) -> None:
    """Delete a finished trial's checkpoints from the study's storage (any file system)."""
    try:
        filesystem = trial.storage.storage_filesystem
        for path in tune_checkpoints(filesystem, trial.storage.trial_fs_path):
            filesystem.delete_dir(path)
    except Exception as exc:  # noqa: BLE001 - losing disk space is not worth a crash
        log.warning("could not delete the checkpoints of %s: %s", trial.trial_id, exc)


class ProgressCallback(tune.Callback):
    """One compact, refreshing summary line instead of Ray's tables.

    ``smoke run-000 | 12 trials: 5 done, 2 running, 5 pending, 0 failed | best
    val/headline 43.2 | 3m12s, ~4m left``. On a terminal it redraws in place; in a log
    it prints a line when something changes (at most every 10 s).
    """

    def __init__(self, name: str, metric: str, mode: str, planned: int | None = None) -> None:
        self.name, self.metric, self.mode, self.planned = name, metric, mode, planned
        self._t0: float | None = None
        self._last_print = 0.0
        self._last_text = ""
        self._durations: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "metric": self.metric, "mode": self.mode,
                "planned": self.planned}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def summary(self, trials: list[Any]) -> str:
        now = time.time()
        if self._t0 is None:
            self._t0 = now
        counts = {"done": 0, "running": 0, "pending": 0, "failed": 0}
        best = None
        for t in trials:
            if t.status == "TERMINATED":
                counts["done"] += 1
            elif t.status == "ERROR":
                counts["failed"] += 1
            elif t.status in ("RUNNING", "PAUSED"):
                counts["running"] += 1
            else:
                counts["pending"] += 1
            value = (t.last_result or {}).get(self.metric)
            if isinstance(value, int | float) and math.isfinite(value):
                better = best is None or (value > best if self.mode == "max" else value < best)
                best = value if better else best
            if t.status in ("TERMINATED", "ERROR") and t.trial_id not in self._durations:
                self._durations[t.trial_id] = float((t.last_result or {}).get("time_total_s",
                                                                                0.0))
        total = max(len(trials), self.planned or 0)
        counts["pending"] += total - len(trials)
        elapsed = now - self._t0
        finished = counts["done"] + counts["failed"]
        eta = ""
        if 0 < finished < total:
            rate = elapsed / finished
            eta = f", ~{_fmt(rate * (total - finished))} left"
        best_text = f"best {self.metric} {best:.2f}" if best is not None else "no result yet"
        return (f"{self.name} | {total} trials: {counts['done']} done, {counts['running']} "
                f"running, {counts['pending']} pending, {counts['failed']} failed | "
                f"{best_text} | {_fmt(elapsed)}{eta}")

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.time()
        tty = sys.stderr.isatty()
        if now - self._last_print < (1.0 if tty else 10.0):
            return
        text = self.summary(trials)
        if tty:
            sys.stderr.write("\r\x1b[2K" + text)
            sys.stderr.flush()
        elif text.split(" | ")[1] != self._last_text:
            print(text, file=sys.stderr, flush=True)
            self._last_text = text.split(" | ")[1]
        self._last_print = now

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        end = "\n" if sys.stderr.isatty() else ""
        print(end + self.summary(trials), file=sys.stderr, flush=True)


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
