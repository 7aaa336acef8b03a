"""Storage that cannot take a study: refused before anything is written, or stopped in time.

A disk that fills mid-study stops the driver the way Tune's SIGUSR1 does (it saves its
state); the study resumes once there is room, and a trial whose checkpoints were damaged
meanwhile starts again from epoch 0 and says so.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from study.cli import main
from study.export import export_study
from study.ledger import Ledger
from study.runner import read_meta, resume_study, run_study
from study.spec import parse_spec
from study.status import study_status
from tests.study.conftest import read_export, tiny_spec, write_spec


def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through permissions: use a read-only file system
        return Path("/sys/wrf4cir-study-test")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


@pytest.mark.parametrize("case,needle", [
    ("file", "is a file, not a folder"),
    ("unwritable", "cannot write there"),
    ("no-room", "GiB free there, below the 1e+06 GiB"),
    ("negative", "--min-free-gb: expected >= 0"),
])
def test_storage_that_cannot_take_a_study_is_refused(tmp_path, capsys, case, needle):
    import ray

    spec = write_spec(tmp_path / "spec.yaml", tiny_spec("room"))
    storage, extra = tmp_path / "results", []
    if case == "file":
        (tmp_path / "results").write_text("not a folder\n")
        storage = tmp_path / "results" / "sub"
    elif case == "unwritable":
        storage = _unwritable(tmp_path)
    elif case == "no-room":
        extra = ["--min-free-gb", "1e6"]
    else:
        extra = ["--min-free-gb", "-1"]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["run", str(spec), "--storage", str(storage), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created
    assert not ray.is_initialized()


def test_resume_without_room_leaves_the_study_untouched(tmp_path, capsys):
    study_dir = tmp_path / "results" / "room"
    study_dir.mkdir(parents=True)
    meta = {"name": "room", "spec": tiny_spec("room"), "ray_storage": str(study_dir / "tune"),
            "runs": [{"id": "run-000", "status": "interrupted", "repeat_offset": 0,
                      "repeats": 1}]}
    (study_dir / "study.json").write_text(json.dumps(meta))
    Ledger(study_dir / "ledger.sqlite").upsert_trial("run-000/t1", status="running")
    snapshot = {p.name: p.read_bytes() for p in study_dir.iterdir()}
    assert main(["resume", str(study_dir), "--min-free-gb", "1e6"]) == 2
    assert "GiB free there" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in study_dir.iterdir()} == snapshot


def _checkpoints(trial_dir: Path) -> list[Path]:
    return sorted(trial_dir.glob("checkpoint_*/checkpoint.pt"))


def test_a_filling_disk_stops_the_study_resumably(tmp_path, monkeypatch, caplog, local_ray):
    from study import callbacks

    epochs = 6
    spec = tiny_spec("filling", base={**tiny_spec()["base"],
                                      "optim": {"epochs": epochs, "batch_size": 8,
                                                "lr": 1e-3}})

    def filling(path: Path) -> int:
        # the disk "fills" (this machine's cannot, safely) once a trial has stored a
        # checkpoint; the start-up check reads the real disk
        ledger = path / "ledger.sqlite"
        return 0 if ledger.is_file() and Ledger(ledger, readonly=True).epochs() else 2**60

    monkeypatch.setattr(callbacks, "free_bytes", filling)
    study_dir = run_study(parse_spec(spec), storage=tmp_path / "results", min_free_gb=1.0)
    monkeypatch.undo()
    assert any("below --min-free-gb 1: stopping the study" in r.message for r in caplog.records)
    assert read_meta(study_dir)["runs"][0]["status"] == "interrupted"
    assert "state: interrupted" in study_status(study_dir)
    trials = Ledger(study_dir / "ledger.sqlite").trials()
    assert len(trials) == 2 and {t["status"] for t in trials} <= {"running", "pending"}

    # meanwhile the disk damaged every checkpoint of one trial
    trial_dirs = [d for d in (study_dir / "tune" / "run-000").glob("train_cir_*")
                  if _checkpoints(d)]
    victim = trial_dirs[0]
    for ckpt in _checkpoints(victim):
        ckpt.write_bytes(ckpt.read_bytes()[:1000])

    resume_study(study_dir)  # there is room again
    trials, epochs_df = read_export(export_study(study_dir))
    assert set(trials["status"]) == {"completed"} and len(trials) == 2
    assert not epochs_df.duplicated(["trial_id", "epoch"]).any()
    for _, group in epochs_df.groupby("trial_id"):
        assert sorted(group["epoch"]) == list(range(1, epochs + 1))
    ray_id = "_".join(victim.name.split("_")[2:4])
    row = trials[trials["trial_id"] == f"run-000/{ray_id}"].iloc[0]
    assert "no readable checkpoint left, restarted from epoch 0" in row["notes"]
    assert "unreadable: checkpoint_" in row["notes"]
    restarted = epochs_df[epochs_df["trial_id"] == row["trial_id"]]
    assert (restarted["trial/resumed_from"] == 0).all()  # every epoch from the new start


def test_the_guard_signals_only_below_its_limit_and_only_to_a_handler(tmp_path, caplog):
    """It interrupts through the handler Tune installs; 0 GiB turns it off."""
    from study.callbacks import StorageGuard

    previous = signal.getsignal(signal.SIGUSR1)
    hits = []
    try:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # no Tune handler: SIGUSR1 would kill
        blind = StorageGuard(str(tmp_path), 1e6, every_s=0)
        blind.on_step_end(0, [])
        assert blind.tripped and "cannot interrupt this driver" in caplog.text
        signal.signal(signal.SIGUSR1, lambda *_: hits.append(1))
        off = StorageGuard(str(tmp_path), 0.0, every_s=0)
        roomy = StorageGuard(str(tmp_path), 1e-6, every_s=0)
        tight = StorageGuard(str(tmp_path), 1e6, every_s=0)
        for guard in (off, roomy, tight, tight):
            guard.on_step_end(0, [])
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert hits == [1] and tight.tripped and not off.tripped and not roomy.tripped
