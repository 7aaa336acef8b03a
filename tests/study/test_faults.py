"""Faults on a real multi-node Ray cluster (head + 2 worker nodes on this machine).

One run of the fault drill covers the issue's scenarios 1-3 and 5: a worker node killed
mid-study, the driver killed then resumed, a trial's process killed at every attempt, a
truncated checkpoint. The drill's own checks read the study's parquet export, ledger and
Optuna storage; the tests here also check that those checks can fail.
"""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from study.drill import AT_EPOCH, EPOCHS, SCENARIOS, Outcome, check_node, run_drill
from study.ledger import Ledger
from study.status import study_status
from tests.study.conftest import read_export

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    """All scenarios, once: ``({scenario: Outcome}, printed lines)``."""
    lines: list[str] = []
    outcomes = run_drill(None, tmp_path_factory.mktemp("drill"), SCENARIOS,
                         report=lines.append)
    return {o.scenario: o for o in outcomes}, lines


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_passes_on_a_multinode_cluster(drill, scenario):
    outcomes, lines = drill
    out = outcomes[scenario]
    assert out.passed, "\n".join(lines)
    assert len(out.checks) >= 5  # every check listed in study.drill ran


def test_a_killed_node_costs_no_epoch(drill):
    study_dir = drill[0]["node"].study_dir
    trials, epochs = read_export(study_dir)
    victim = trials[trials["failures"] > 0]
    assert len(victim) == 1 and victim["status"].iloc[0] == "completed"
    rows = epochs[epochs["trial_id"] == victim["trial_id"].iloc[0]]
    assert sorted(rows["epoch"]) == list(range(1, EPOCHS + 1))
    # epochs after the restart name the checkpoint they continued from
    assert rows["trial/resumed_from"].max() >= AT_EPOCH
    assert "node has died" in victim["notes"].iloc[0]


def test_killed_trial_process_says_why_it_errored(drill):
    study_dir = drill[0]["trial"].study_dir
    trials, _ = read_export(study_dir)
    errored = trials[trials["status"] == "errored"]
    assert len(errored) == 1
    assert errored["failures"].iloc[0] == 2  # first attempt + max_failures=1 retry
    assert "worker process has died" in errored["error"].iloc[0]
    notes = errored["notes"].iloc[0].splitlines()
    assert "retrying from its last checkpoint" in notes[0]
    assert "no retries left" in notes[-1]
    assert "errored run-000/" in study_status(study_dir)


def test_truncated_checkpoint_is_skipped_and_reported(drill):
    study_dir = drill[0]["checkpoint"].study_dir
    text = study_status(study_dir)
    assert "recovered run-000/" in text and "resumed from the older checkpoint_" in text


def test_the_node_checks_catch_a_lost_epoch(drill, tmp_path):
    """A drill whose checks cannot fail would prove nothing: damage a copy and re-check."""
    src = drill[0]["node"]
    copy = tmp_path / "node"
    shutil.copytree(src.study_dir, copy, ignore=shutil.ignore_patterns("tune"))
    victim = next(t for t in Ledger(copy / "ledger.sqlite").trials() if t["failures"])
    with sqlite3.connect(copy / "ledger.sqlite") as con:
        con.execute("DELETE FROM epochs WHERE trial_key=? AND epoch=?",
                    (victim["trial_key"], EPOCHS - 1))
    injector = type("Injected", (), {"injected": [{"trial": victim["ray_trial_id"],
                                                   "epoch": AT_EPOCH}], "errors": []})()
    out = Outcome("node", study_dir=copy)
    check_node(out, injector)
    assert not out.passed
    failed = [what for what, ok in out.checks if not ok]
    assert failed == [f"completed trials have epochs 1..{EPOCHS}, no gap"]


def test_the_node_drill_says_what_a_cluster_lacks(tmp_path):
    """With one worker node, no node could take over a dead one's trials: say so, run nothing."""
    (out,) = run_drill(None, tmp_path, ["node"], report=lambda line: None, workers=1)
    assert not out.passed and out.study_dir is None
    assert "another node with a CPU to take over its trials" in out.error
