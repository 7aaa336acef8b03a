"""The report's numbers, from small hand-made exports whose gaps are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from study import schema
from study.report import build_report
from study.report.tables import (
    aggregate,
    best_table,
    compute,
    gap_table,
    pareto_front,
    reduction_table,
)

METRICS = ["val/headline", "probe/headline", "gap/headline", "val/R@1", "probe/R@1",
           "gap/R@1", "time/train", "time/second_pass"]


def trial(tid, model, dataset, radius, seed, val, gap, status="completed", kind="wrf",
          params=None, epochs=3):
    row = {"study": "hand", "trial_id": tid, "run": "run-000",
           "cell_id": f"{model}|{dataset}|{kind}|{radius}",
           "cell": f"model={model} data.name={dataset} perturb.radius={radius}",
           "repeat": seed, "status": status, "epochs_done": epochs, "max_epochs": 3,
           "resources_cpu": 1.0, "resources_gpu": 0.0, "wall_time_s": 3600.0,
           "config.model.name": model, "config.data.name": dataset,
           "config.perturb.kind": kind, "config.perturb.radius": radius, "config.seed": seed,
           "search_params": None if params is None else json.dumps(params),
           "last.val/headline": val, "last.probe/headline": val + gap,
           "last.gap/headline": gap, "last.val/R@1": val / 2, "last.probe/R@1": (val + gap) / 2,
           "last.gap/R@1": gap / 2}
    return row


def write_export(folder, rows, epoch_rows=None):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema.trials_schema(METRICS)),
                   folder / "trials.parquet")
    pq.write_table(pa.Table.from_pylist(epoch_rows or [], schema=schema.epochs_schema(METRICS)),
                   folder / "epochs.parquet")


def hand_made():
    rows = []
    # model A on D: radius 0 has gaps 10, 12, 14 (mean 12); radius 1e-3 has 5, 6, 7 plus one
    # errored seed whose (garbage) value must not be averaged in
    for s, (v, g) in enumerate([(50, 10), (51, 12), (52, 14)]):
        rows.append(trial(f"r0-{s}", "A", "D", 0.0, s, v, g))
    for s, (v, g) in enumerate([(60, 5), (61, 6), (62, 7)]):
        rows.append(trial(f"r3-{s}", "A", "D", 1e-3, s, v, g))
    rows.append(trial("r3-err", "A", "D", 1e-3, 3, 999.0, 999.0, status="errored"))
    # model B on D: one seed each; the perturbation narrows the gap but lowers val
    rows.append(trial("b0", "B", "D", 0.0, 0, 40, 20))
    rows.append(trial("b3", "B", "D", 1e-3, 0, 35, 15))
    return pd.DataFrame(rows)


def test_aggregate_is_the_mean_and_a_t_interval():
    agg = aggregate([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (agg.mean, agg.sd, agg.n) == (2.0, 1.0, 3)
    assert agg.lo == pytest.approx(2 - half) and agg.hi == pytest.approx(2 + half)
    one = aggregate([5.0, float("nan")])  # NaN dropped; one value has no interval
    assert one.mean == 5.0 and one.n == 1 and math.isnan(one.lo) and math.isnan(one.hi)
    assert aggregate([]).n == 0 and math.isnan(aggregate([]).mean)


def test_gap_table_averages_completed_seeds_only_and_flags_the_rest():
    gaps = gap_table(hand_made())
    g = gaps[gaps["metric"] == "gap/headline"].set_index("cell_id")
    zero, pert = g.loc["A|D|wrf|0.0"], g.loc["A|D|wrf|0.001"]
    assert zero["mean"] == pytest.approx(12.0) and zero["n"] == 3 and zero["complete"]
    assert zero["lo"] == pytest.approx(12 - stats.t.ppf(0.975, 2) * 2 / math.sqrt(3))
    assert pert["mean"] == pytest.approx(6.0)  # the errored 999 is not in it
    assert (pert["n"], pert["n_trials"], pert["n_errored"]) == (3, 4, 1)
    assert not pert["complete"]
    r1 = gaps[(gaps["metric"] == "gap/R@1") & (gaps["cell_id"] == "A|D|wrf|0.0")]
    assert r1["mean"].iloc[0] == pytest.approx(6.0)


def test_reduction_versus_radius_zero():
    red = reduction_table(gap_table(hand_made())).set_index("model")
    assert red.loc["A", "reduction_pct"] == pytest.approx(50.0)  # 12 -> 6
    assert red.loc["A", "val_delta"] == pytest.approx(10.0)  # 51 -> 61
    assert not red.loc["A", "complete"]
    assert red.loc["B", "reduction_pct"] == pytest.approx(25.0)  # 20 -> 15
    assert red.loc["B", "val_delta"] == pytest.approx(-5.0)


def test_best_configuration_and_whether_it_beats_radius_zero():
    best = best_table(hand_made()).set_index("model")
    a = best.loc["A"]
    assert a["best_radius"] == 1e-3 and a["mean"] == pytest.approx(61.0)
    expected = stats.ttest_ind([60, 61, 62], [50, 51, 52], equal_var=False,
                               alternative="greater").pvalue
    assert a["p_value"] == pytest.approx(expected) and a["beats_zero"]
    b = best.loc["B"]  # one seed each: radius 0 is best here, and nothing can be tested
    assert b["best_radius"] == 0.0 and b["beats_zero"] is False or b["beats_zero"] == False  # noqa: E712


def test_noise_is_not_called_a_win():
    rows = [trial(f"z{s}", "A", "D", 0.0, s, v, 10) for s, v in enumerate([50, 55, 45])]
    rows += [trial(f"p{s}", "A", "D", 1e-3, s, v, 10) for s, v in enumerate([51, 56, 46])]
    a = best_table(pd.DataFrame(rows)).iloc[0]
    assert a["best_radius"] == 1e-3 and a["beats_zero"] is not None and not a["beats_zero"]


def test_pareto_front_by_hand():
    # (val up, gap down): (60, 5) and (70, 10) are on the front; (55, 8) is dominated by
    # (60, 5); (70, 12) by (70, 10)
    pts = np.array([[60, 5], [70, 10], [55, 8], [70, 12]], dtype=float)
    assert pareto_front(pts).tolist() == [True, True, False, False]


def test_report_files_and_numbers_match_the_parquet(tmp_path):
    rows = hand_made().to_dict("records")
    epoch_rows = []
    for r in rows:
        for e in (1, 2, 3):
            epoch_rows.append({"study": "hand", "trial_id": r["trial_id"],
                               "cell_id": r["cell_id"], "epoch": e,
                               "val/headline": r["last.val/headline"] - (3 - e),
                               "probe/headline": r["last.probe/headline"] - (3 - e) / 2,
                               "time/train": 10.0, "time/second_pass":
                               4.0 if r["config.perturb.radius"] else 0.0})
    write_export(tmp_path, rows, epoch_rows)
    out = build_report(tmp_path)
    for name in ("index.html", "summary.md", "figures/gap-model-dataset.png",
                 "figures/gap-model-dataset.svg", "figures/gap-radius-model-D.png",
                 "figures/reduction-D.png", "figures/curves-D-A.png", "tables/cells.parquet",
                 "tables/gaps.parquet", "tables/curves.parquet", "tables/best.parquet"):
        assert (out / name).is_file(), name
    cells = pd.read_parquet(out / "tables" / "cells.parquet").set_index("cell_id")
    assert cells.loc["A|D|wrf|0.0", "gap/headline"] == pytest.approx(12.0)
    curves = pd.read_parquet(out / "tables" / "curves.parquet")
    c = curves[(curves["cell_id"] == "A|D|wrf|0.0") & (curves["split"] == "val")]
    assert c.sort_values("epoch")["mean"].tolist() == pytest.approx([49.0, 50.0, 51.0])
    summary = (out / "summary.md").read_text()
    assert "2/2 model-dataset" not in summary  # findings count cells, not pairs twice
    assert "1/4 (1 errored)" not in summary and "3/4 (1 errored)" in summary
    html = (out / "index.html").read_text()
    assert "data:image/png;base64," in html and "3/4 (1 errored)" in html


def test_names_from_configs_are_escaped_in_the_html(tmp_path):
    evil = "<script>alert(1)</script>"
    rows = [trial("x0", evil, "D", 0.0, 0, 50, 10), trial("x1", evil, "D", 1e-3, 0, 49, 9)]
    for r in rows:
        r["cell"] = f"model={evil}"
    write_export(tmp_path, rows)
    html = (build_report(tmp_path) / "index.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_search_studies_get_a_pareto_front_and_importances(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        lr = float(10 ** rng.uniform(-5, -3))
        kind = ["wrf", "sam"][i % 2]
        rows.append(trial(f"s{i}", "A", "D", 1e-3, 0, 40 + 1e4 * lr, 5 + i % 3, kind="wrf",
                          params={"optim.lr": lr, "perturb.kind": kind}))
    for r in rows:
        r["cell_id"], r["cell"] = "all", "(no grid)"
    write_export(tmp_path, rows)
    trials, _ = pd.read_parquet(tmp_path / "trials.parquet"), None
    t = compute(trials, pd.read_parquet(tmp_path / "epochs.parquet"))
    assert t.pareto["on_front"].any() and len(t.pareto) == 8
    val_imp = t.importances[t.importances["objective"] == "val/headline"].set_index("param")
    assert val_imp.loc["optim.lr", "importance"] > val_imp.loc["perturb.kind", "importance"]
    out = build_report(tmp_path)
    assert (out / "figures" / "pareto-all.png").is_file()
    assert (out / "figures" / "importance-all.png").is_file()


@pytest.mark.slow  # needs a Chromium binary: apt-get install chromium
def test_the_html_report_renders_in_headless_chromium(tmp_path):
    from study.report.check_html import check

    rows = hand_made().to_dict("records")
    write_export(tmp_path, rows)
    assert check(build_report(tmp_path)) == []
    # and the check does catch a broken page
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.html").write_text(
        "<html><body><img src=\"data:image/png;base64,AAAA\">"
        "<script>throw new Error('boom')</script></body></html>")
    problems = check(broken)
    assert any("not a valid PNG" in p for p in problems)
    assert any("Uncaught" in p for p in problems)


def test_holm_correction_by_hand():
    from study.report.tables import holm

    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adj == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})


def test_a_study_without_any_epoch_still_reports(tmp_path):
    row = {"study": "empty", "trial_id": "run-000/x", "run": "run-000", "cell_id": "c",
           "cell": "c", "status": "running", "config.model.name": "m",
           "config.data.name": "d", "config.perturb.kind": "wrf", "config.perturb.radius": 0.0}
    pq.write_table(pa.Table.from_pylist([row], schema=schema.trials_schema([])),
                   tmp_path / "trials.parquet")
    pq.write_table(pa.Table.from_pylist([], schema=schema.epochs_schema([])),
                   tmp_path / "epochs.parquet")
    out = build_report(tmp_path)
    assert "No trial has reported an epoch yet" in (out / "summary.md").read_text()


def test_a_training_size_axis_gets_its_own_facets_and_gap_curve(tmp_path):
    rows = []
    for n, gaps in ((50, (20, 12)), (400, (8, 6))):
        for radius, gap in zip((0.0, 1e-3), gaps, strict=True):
            for s in range(2):
                r = trial(f"{n}-{radius}-{s}", "A", "D", radius, s, 50 + s, gap + s)
                r["config.data.max_triplets"] = n
                r["cell_id"] = f"{n}|{radius}"
                rows.append(r)
    write_export(tmp_path, rows)
    out = build_report(tmp_path)
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert "gap-triplets-D-A.png" in names
    assert {"gap-radius-model-D-triplets-50.png", "gap-radius-model-D-triplets-400.png"} <= names
    red = pd.read_parquet(out / "tables" / "reduction.parquet").set_index("triplets")
    assert red.loc[50, "reduction_pct"] == pytest.approx(100 * (20.5 - 12.5) / 20.5)
    assert red.loc[400, "reduction_pct"] == pytest.approx(100 * (8.5 - 6.5) / 8.5)
