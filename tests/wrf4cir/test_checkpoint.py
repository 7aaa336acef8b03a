from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from wrf4cir.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def state(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((3,), float(epoch))}, "rng": rng_state(),
            "config": {"optim": {"betas": [0.9, 0.98]}}, "history": [{"val/R@1": 1.5}]}


def test_save_then_load_round_trip(tmp_path):
    d = save_checkpoint(state(3), checkpoint_dir(tmp_path, 3))
    loaded = load_checkpoint(d)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.full((3,), 3.0))
    assert loaded["config"] == {"optim": {"betas": [0.9, 0.98]}}
    assert loaded["history"] == [{"val/R@1": 1.5}]
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-0003"]  # no temp files left


def test_rng_state_round_trip_through_a_safe_load(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    save_checkpoint({"rng": rng_state()}, tmp_path / "c")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_overwrite_replaces_the_directory(tmp_path):
    save_checkpoint(state(1), tmp_path / "c")
    save_checkpoint(state(2), tmp_path / "c")
    assert load_checkpoint(tmp_path / "c")["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_truncated_file_is_reported_and_latest_falls_back(tmp_path, caplog):
    for e in (1, 2):
        save_checkpoint(state(e), checkpoint_dir(tmp_path, e))
    f = checkpoint_dir(tmp_path, 2) / "checkpoint.pt"
    f.write_bytes(f.read_bytes()[:100])  # a write cut off
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(f)
    path, loaded = load_latest(tmp_path)
    assert path.name == "epoch-0001" and loaded["epoch"] == 1
    assert "epoch-0002" in caplog.text


def test_code_in_a_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format_version": 1, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")


def test_foreign_file_is_refused(tmp_path):
    torch.save({"a": 1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a wrf4cir checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_prune_keeps_the_newest(tmp_path):
    for e in range(1, 6):
        save_checkpoint(state(e), checkpoint_dir(tmp_path, e))
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch-0004", "epoch-0005"]
