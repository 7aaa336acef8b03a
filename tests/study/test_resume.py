"""A driver killed with SIGKILL mid-study, then ``resume``: every trial done exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd

from study.ledger import Ledger
from tests.study.conftest import tiny_spec, write_spec


def _wait(predicate, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def _some_trial_midway(ledger_path, epochs: int) -> bool:
    if not ledger_path.is_file():
        return False
    ledger = Ledger(ledger_path, readonly=True)
    try:
        trials = ledger.trials()
    except Exception:  # noqa: BLE001 - the driver may be creating the tables
        return False
    running = {t["trial_key"] for t in trials if t["status"] == "running"}
    done = {}
    for row in ledger.epochs():
        done[row["trial_key"]] = row["epoch"]
    return any(2 <= done.get(k, 0) < epochs for k in running)


def test_resume_after_the_driver_is_killed(tmp_path):
    epochs = 6
    spec = tiny_spec("killed", grid={},
                     base={**tiny_spec()["base"],
                           "optim": {"epochs": epochs, "batch_size": 8, "lr": 1e-3}},
                     search={"sampler": "random", "num_samples": 3, "seed": 0,
                             "objectives": [{"metric": "val/headline", "mode": "max"}],
                             "space": {"perturb.radius": {"uniform": [0.0, 1e-2]}}})
    path = write_spec(tmp_path / "spec.yaml", spec)
    study_dir = tmp_path / "results" / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "study.cli"]
    driver = subprocess.Popen([*cmd, "run", str(path), "--storage", str(tmp_path / "results")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert _wait(lambda: _some_trial_midway(study_dir / "ledger.sqlite", epochs), 240), \
            "no trial got midway"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()

    from study.status import study_status

    assert "state: interrupted" in study_status(study_dir)  # status works after a crash
    resumed = subprocess.run([*cmd, "resume", str(study_dir)], env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, (resumed.returncode, resumed.stdout[-1000:],
                                     resumed.stderr[-3000:])

    trials = pd.read_parquet(study_dir / "trials.parquet")
    epochs_df = pd.read_parquet(study_dir / "epochs.parquet")
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"completed"}
    assert not epochs_df.duplicated(["trial_id", "epoch"]).any()
    for _, group in epochs_df.groupby("trial_id"):
        assert sorted(group["epoch"]) == list(range(1, epochs + 1))
    # the interrupted trial continued from its checkpoint, not from epoch 0
    restarted = epochs_df[epochs_df["trial/resumed_from"] > 0]
    assert len(restarted) > 0
    for _, row in restarted.iterrows():
        assert row["epoch"] > row["trial/resumed_from"]
    # the Optuna history: one finished entry per trial, with the values the trials reported
    storage = f"sqlite:///{study_dir}/optuna.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    ost = optuna.load_study(study_name=summary.study_name, storage=storage)
    complete = [t for t in ost.trials if t.state.name == "COMPLETE"]
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in complete}
    assert len(by_ray) == 3 and len(complete) == 3
    for _, row in trials.iterrows():
        t = by_ray[row["trial_id"].split("/")[1]]
        assert t.value == row["last.val/headline"]
        assert row["optuna_state"] == "COMPLETE"
    assert all(t.state.name != "RUNNING" for t in ost.trials)
