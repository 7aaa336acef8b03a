"""Studies on a real local Ray instance: grid, search, grid x search, extend, export."""

from __future__ import annotations

import duckdb
import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest

from study import schema
from study.export import build_tables, export_study
from study.ledger import Ledger
from study.runner import StudyError, driver_lock, extend_study, resume_study, run_study
from study.spec import SpecError, parse_spec
from study.status import study_status
from tests.study.conftest import read_export, tiny_spec

pytestmark = pytest.mark.usefixtures("local_ray")


def test_grid_study_runs_every_cell_and_exports_typed_parquet(tmp_path):
    study = parse_spec(tiny_spec("grid", repeat=2))
    study_dir = run_study(study, storage=tmp_path)
    export_study(study_dir)
    trials, epochs = read_export(study_dir)
    assert len(trials) == 4  # 2 cells x 2 repeats
    assert set(trials["status"]) == {"completed"}
    assert sorted(trials["config.perturb.radius"]) == [0.0, 0.0, 0.01, 0.01]
    assert sorted(trials["config.seed"]) == [0, 0, 1, 1]
    assert (trials["epochs_done"] == 2).all() and (trials["max_epochs"] == 2).all()
    # epochs: every (trial, epoch) exactly once, with the reported metrics
    assert len(epochs) == 8 and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert set(epochs["epoch"]) == {1, 2}
    ep = epochs.set_index(["trial_id", "epoch"])
    for _, row in trials.iterrows():
        last = ep.loc[(row["trial_id"], 2)]
        assert row["last.val/headline"] == pytest.approx(last["val/headline"])
        assert last["gap/headline"] == pytest.approx(last["probe/headline"] - last["val/headline"])
    # second pass time only where the radius is non-zero
    r0 = trials[trials["config.perturb.radius"] == 0]["last.time/second_pass"]
    r1 = trials[trials["config.perturb.radius"] > 0]["last.time/second_pass"]
    assert (r0 == 0).all() and (r1 > 0).all()
    assert trials["git_commit"].notna().all() and trials["package_version"].notna().all()
    # the same files through pyarrow and DuckDB
    assert pq.read_table(study_dir / "trials.parquet").num_rows == 4
    n = duckdb.sql(f"SELECT count(*) FROM '{study_dir / 'epochs.parquet'}' "
                   "WHERE \"val/headline\" >= 0").fetchall()[0][0]
    assert n == 8
    text = study_status(study_dir)
    assert "state: finished" in text and "4 completed" in text


def _checkpoints(study_dir):
    return list((study_dir / "tune").glob("run-*/*/checkpoint_*"))


def test_export_schema_matches_the_schema_module(tmp_path):
    spec = tiny_spec("schema", grid={}, checkpoint={"keep_finished": False})
    study_dir = run_study(parse_spec(spec), storage=tmp_path)
    assert _checkpoints(study_dir) == []  # a finished trial's checkpoints were dropped
    trials, epochs = build_tables(study_dir)
    cfg_cols = schema.config_columns()
    for name, tp in {**schema.TRIAL_FIXED, **cfg_cols}.items():
        assert trials.schema.field(name).type == tp, name
    assert cfg_cols["config.optim.lr"].equals(schema.pa.float64())
    assert cfg_cols["config.optim.epochs"].equals(schema.pa.int64())
    assert cfg_cols["config.perturb.kind"].equals(schema.pa.string())
    assert cfg_cols["config.perturb.modules"].equals(schema.pa.list_(schema.pa.string()))
    for name, tp in schema.EPOCH_FIXED.items():
        assert epochs.schema.field(name).type == tp, name
    metric_cols = [f.name for f in epochs.schema if f.name not in schema.EPOCH_FIXED]
    assert {"val/headline", "gap/headline", "probe/R@1", "time/second_pass"} <= set(metric_cols)
    assert all(epochs.schema.field(m).type == schema.pa.float64() for m in metric_cols)
    for m in metric_cols:
        assert trials.schema.field(f"last.{m}").type == schema.pa.float64()
        assert trials.schema.field(f"best.{m}").type == schema.pa.float64()


def test_extend_adds_seeds_and_keeps_the_old_trials(tmp_path):
    study_dir = run_study(parse_spec(tiny_spec("ext")), storage=tmp_path)
    before, _ = read_export(export_study(study_dir))
    assert len(_checkpoints(study_dir)) == 2 * 2  # kept by default: 2 trials x keep 2
    extend_study(study_dir, samples=1)
    after, epochs = read_export(export_study(study_dir))
    assert len(after) == 4 and set(after["run"]) == {"run-000", "run-001"}
    old = after[after["run"] == "run-000"].set_index("trial_id")
    pd.testing.assert_series_equal(old["last.val/headline"],
                                   before.set_index("trial_id")["last.val/headline"])
    assert sorted(after[after["run"] == "run-001"]["config.seed"]) == [1, 1]  # new seeds
    assert not epochs.duplicated(["trial_id", "epoch"]).any()


SEARCH = {"sampler": "tpe", "num_samples": 3, "seed": 1,
          "objectives": [{"metric": "val/headline", "mode": "max"},
                         {"metric": "gap/headline", "mode": "min"}],
          "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]},
                    "perturb.kind": {"choice": ["wrf", "sam"]},
                    "optim.batch_size": {"int": [8, 12]}}}


def test_grid_by_search_tunes_each_cell_with_its_own_optuna_study(tmp_path):
    spec = tiny_spec("gxs", grid={"data.name": ["synthetic-shapes", "synthetic-scenes"]},
                     search=SEARCH, scheduler={"grace_period": 1, "reduction_factor": 2},
                     base={**tiny_spec()["base"], "optim": {"epochs": 3, "batch_size": 8}})
    study_dir = run_study(parse_spec(spec), storage=tmp_path)
    trials, _ = read_export(export_study(study_dir))
    assert len(trials) == 6 and trials.groupby("cell").size().tolist() == [3, 3]
    storage = f"sqlite:///{study_dir}/optuna.db"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == sorted(f"gxs/{c}" for c in trials["cell_id"].unique())
    for name in names:
        ost = optuna.load_study(study_name=name, storage=storage)
        assert len(ost.trials) == 3
        assert all(t.state.name in ("COMPLETE", "PRUNED") for t in ost.trials)
        for t in ost.trials:  # the recorded values are the trial's real last metrics
            row = trials[(trials["optuna_study"] == name) & (trials["optuna_number"] == t.number)]
            assert len(row) == 1
            row = row.iloc[0]
            assert row["config.optim.lr"] == pytest.approx(t.params["optim.lr"])
            assert row["config.optim.batch_size"] == t.params["optim.batch_size"]
            if t.state.name == "COMPLETE":
                assert row["status"] == "completed"
                assert t.values == pytest.approx([row["last.val/headline"],
                                                  row["last.gap/headline"]])
            else:  # stopped early by ASHA is recorded as what it is
                assert row["status"] == "stopped_early" and row["epochs_done"] < 3
    # extend: more Optuna trials on the same searches, the history kept
    extend_study(study_dir, samples=1)
    trials, _ = read_export(export_study(study_dir))
    assert len(trials) == 8
    for name in names:
        assert len(optuna.load_study(study_name=name, storage=storage).trials) == 4


def test_diverging_trial_is_errored_with_its_reason_and_failed_in_optuna(tmp_path):
    spec = tiny_spec("div", grid={},
                     base={**tiny_spec()["base"],
                           "optim": {"optimizer": "sgd", "schedule": "constant", "epochs": 3,
                                     "batch_size": 8},
                           "perturb": {"kind": "none"}},
                     search={"sampler": "grid", "num_samples": 2,
                             "objectives": [{"metric": "val/headline", "mode": "max"}],
                             "space": {"optim.lr": {"choice": [1e-3, 1e12]}}})
    study_dir = run_study(parse_spec(spec), storage=tmp_path)
    trials, _ = read_export(export_study(study_dir))
    bad = trials[trials["config.optim.lr"] == 1e12].iloc[0]
    good = trials[trials["config.optim.lr"] == 1e-3].iloc[0]
    assert bad["status"] == "errored" and "loss is" in bad["error"] and "epoch" in bad["error"]
    # not retried: a diverging trial would diverge again
    assert bad["optuna_state"] == "FAIL" and bad["failures"] == 0
    assert good["status"] == "completed" and good["optuna_state"] == "COMPLETE"


def test_a_second_driver_on_the_same_study_is_refused(tmp_path):
    study_dir = run_study(parse_spec(tiny_spec("lock", grid={})), storage=tmp_path)
    with driver_lock(study_dir), pytest.raises(StudyError, match="another driver"):
        resume_study(study_dir)
    with pytest.raises(StudyError, match="already lives here"):
        run_study(parse_spec(tiny_spec("lock", grid={})), storage=tmp_path)
    with pytest.raises(SpecError, match="samples"):
        extend_study(study_dir, samples=0)
    # nothing to do: resume of a finished study leaves it as it is
    ledger_rows = Ledger(study_dir / "ledger.sqlite", readonly=True).trials()
    resume_study(study_dir)
    assert Ledger(study_dir / "ledger.sqlite", readonly=True).trials() == ledger_rows


def test_uri_storage_keeps_checkpoints_there_and_the_ledger_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    remote = tmp_path / "bucket"
    study_dir = run_study(parse_spec(tiny_spec("uri", grid={})), storage=f"file://{remote}")
    assert study_dir == tmp_path / "results" / "uri"
    assert (remote / "uri" / "run-000").is_dir()
    trials, _ = read_export(export_study(study_dir))
    assert list(trials["status"]) == ["completed"]
    resume_study(study_dir)  # finds the Tune state through the URI; nothing left to do


def test_a_failing_trial_is_retried_then_errored_and_the_others_finish(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    spec = tiny_spec("fail", grid={"model.pretrained": [None, str(bad)]},
                     failure={"max_failures": 1})
    study_dir = run_study(parse_spec(spec), storage=tmp_path / "results")
    trials, _ = read_export(export_study(study_dir))
    broken = trials[trials["config.model.pretrained"] == str(bad)].iloc[0]
    assert broken["status"] == "errored" and broken["failures"] == 2  # first try + 1 retry
    assert "cannot load" in broken["error"]
    fine = trials[trials["config.model.pretrained"].isna()].iloc[0]
    assert fine["status"] == "completed"
    from study.runner import read_meta

    assert read_meta(study_dir)["runs"][0]["status"] == "finished"
    assert "1 errored" in study_status(study_dir)
