"""Compute first: the report's typed tables, from the parquet export alone.

Every number a figure or the summary shows comes from one of these tables, and each is
saved as ``report/tables/<name>.parquet``. Conventions:

- A trial's value of a metric is its **last epoch's** (``last.<metric>``): the model the
  fine-tuning ends with. Only ``completed`` trials enter the aggregates; trials stopped
  early, errored, running or pending are counted, never averaged in.
- The aggregate over seeds is :func:`aggregate`: the mean and a 95% **t-interval**
  (``mean +- t(0.975, n-1) * sd / sqrt(n)``); with one seed the interval is undefined
  (NaN) and says so.
- The generalization gap itself is ``wrf4cir.evaluation.generalization_gap``; the
  ``gap/*`` columns here are its per-trial values, aggregated.

Axis columns shared by the tables: ``model``, ``dataset``, ``kind``, ``radius``,
``triplets`` (``data.max_triplets``, NaN for all), and ``variant`` (a label of any other
config keys that vary across the study's grid, "" if none).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

AXES = ("model", "dataset", "kind", "radius", "triplets", "variant")
_AXIS_SOURCE = {"model": "config.model.name", "dataset": "config.data.name",
                "kind": "config.perturb.kind", "radius": "config.perturb.radius",
                "triplets": "config.data.max_triplets"}
# config keys that differ between trials without defining a cell
_NOT_AXES = {"config.seed", "config.run.out_dir", "config.run.resume", "config.run.threads"}
HEADLINES = ("val/headline", "probe/headline", "gap/headline")
COUNTS = ["n_trials", "n_completed", "n_stopped_early", "n_errored", "n_unfinished",
          "complete"]
GAP_COLUMNS = ["cell_id", "cell", "grid_cell_id", *AXES, "metric", "mean", "lo", "hi", "sd",
               "n", *COUNTS]
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Aggregate:
    mean: float
    lo: float
    hi: float
    sd: float
    n: int


def aggregate(values: Sequence[float], confidence: float = CONFIDENCE) -> Aggregate:
    """Mean and t-interval of a metric over seeds (NaN values are dropped first).

    The one definition of "the value of a cell", used by the report and by ``status``.
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(x.size)
    if n == 0:
        return Aggregate(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Aggregate(mean, math.nan, math.nan, math.nan, 1)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Aggregate(mean, mean - half, mean + half, sd, n)


def load_export(study_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, epochs)`` from a study's parquet files (the only input of a report)."""
    study_dir = Path(study_dir)
    return (pd.read_parquet(study_dir / "trials.parquet"),
            pd.read_parquet(study_dir / "epochs.parquet"))


def with_axes(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials with the shared axis columns added."""
    out = trials.copy()
    for axis, col in _AXIS_SOURCE.items():
        out[axis] = out.get(col, np.nan)
    searched = set()
    for raw in out.get("search_params", pd.Series(dtype=object)).dropna():
        searched |= {f"config.{k}" for k in json.loads(raw)}
    config_cols = [c for c in out.columns if c.startswith("config.")]
    varying = [c for c in config_cols
               if c not in _NOT_AXES and c not in searched and c not in _AXIS_SOURCE.values()
               and out[c].astype(str).nunique(dropna=False) > 1]
    out["variant"] = [" ".join(f"{c[len('config.'):]}={row[c]}" for c in varying)
                      for _, row in out.iterrows()] if varying else ""
    out["triplets"] = pd.to_numeric(out["triplets"], errors="coerce")
    # the unit of aggregation: a grid cell, whose trials differ only by seed. In a search,
    # trials of one grid cell differ by their Optuna parameters, so each parameter set is
    # its own unit (never averaged with others as if they were seeds)
    out["grid_cell_id"], out["grid_cell"] = out["cell_id"], out["cell"]
    if "search_params" in out and out["search_params"].notna().any():
        params = out["search_params"].fillna("")
        out["cell_id"] = out["cell_id"].astype(str) + "|" + params
        out["cell"] = [f"{c} {_short_params(p)}".strip() for c, p in zip(out["cell"], params,
                                                                        strict=True)]
    return out


def _short_params(raw: str) -> str:
    if not raw:
        return ""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in sorted(json.loads(raw).items()))


def metric_names(trials: pd.DataFrame) -> list[str]:
    """Metrics present as ``last.<metric>`` columns: recall, headline and loss families."""
    names = [c[len("last."):] for c in trials.columns if c.startswith("last.")]
    keep = ("val/", "probe/", "gap/")
    return [m for m in names if m.startswith(keep) and not m.endswith(("/queries",
                                                                       "/gallery"))]


def gap_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per grid cell and metric: mean, 95% CI, sd and seed counts (long format).

    Columns: ``cell_id, cell, *AXES, metric, mean, lo, hi, sd, n, n_trials,
    n_completed, n_stopped_early, n_errored, n_unfinished, complete``.
    """
    if trials.empty:
        return pd.DataFrame(columns=GAP_COLUMNS)
    t = with_axes(trials)
    rows = []
    for cell_id, g in t.groupby("cell_id", sort=False, dropna=False):
        done = g[g["status"] == "completed"]
        counts = {
            "n_trials": len(g), "n_completed": len(done),
            "n_stopped_early": int((g["status"] == "stopped_early").sum()),
            "n_errored": int((g["status"] == "errored").sum()),
            "n_unfinished": int(g["status"].isin(["running", "pending"]).sum()),
        }
        counts["complete"] = counts["n_completed"] == counts["n_trials"]
        head = g.iloc[0]
        for metric in metric_names(t):
            agg = aggregate(done[f"last.{metric}"].tolist())
            rows.append({"cell_id": cell_id, "cell": head["cell"],
                         "grid_cell_id": head["grid_cell_id"],
                         **{a: head[a] for a in AXES}, "metric": metric,
                         "mean": agg.mean, "lo": agg.lo, "hi": agg.hi, "sd": agg.sd,
                         "n": agg.n, **counts})
    return pd.DataFrame(rows, columns=GAP_COLUMNS)


def wide(gaps: pd.DataFrame, metrics: Sequence[str] = HEADLINES) -> pd.DataFrame:
    """One row per cell: ``<metric>`` mean and ``<metric> CI`` text, plus seed counts."""
    keep = gaps[gaps["metric"].isin(metrics)]
    index = ["cell_id", "cell", "grid_cell_id", *AXES, *COUNTS]
    if keep.empty:
        return pd.DataFrame(columns=[*index, *metrics, *(f"{m} {b}" for m in metrics
                                                          for b in ("lo", "hi"))])
    rows = []
    for key, g in keep.groupby(index, sort=False, dropna=False):
        row = dict(zip(index, key, strict=True))
        for _, r in g.iterrows():
            row[r["metric"]] = r["mean"]
            row[f"{r['metric']} lo"] = r["lo"]
            row[f"{r['metric']} hi"] = r["hi"]
        rows.append(row)
    return pd.DataFrame(rows)


def unperturbed(df: pd.DataFrame) -> pd.Series:
    """Rows without perturbation (radius 0 or kind none): the baseline of every comparison."""
    return (df["radius"] == 0) | (df["kind"] == "none")


def reduction_table(gaps: pd.DataFrame, metric: str = "gap/headline") -> pd.DataFrame:
    """Relative gap reduction of each perturbed cell versus the unperturbed one.

    ``reduction_pct = 100 * (gap_0 - gap) / |gap_0|``: positive means a narrower gap. Cells
    are matched on model, dataset, triplets and variant; ``val_delta`` is the change in
    ``val/headline`` (positive = better held-out recall).
    """
    columns = [*AXES, "cell_id", "gap", "gap_0", "reduction_pct", "val_delta", "complete"]
    if gaps.empty:
        return pd.DataFrame(columns=columns)
    g = gaps[gaps["metric"].isin([metric, "val/headline"])]
    match = ["model", "dataset", "triplets", "variant"]
    base = g[unperturbed(g)]
    rows = []
    for _, r in g[~unperturbed(g) & (g["metric"] == metric)].iterrows():
        same = base
        for m in match:
            same = same[(same[m] == r[m]) | (same[m].isna() & pd.isna(r[m]))]
        b_gap = same[same["metric"] == metric]
        if b_gap.empty:
            continue
        gap0 = float(b_gap["mean"].iloc[0])
        val = g[(g["cell_id"] == r["cell_id"]) & (g["metric"] == "val/headline")]["mean"]
        val0 = same[same["metric"] == "val/headline"]["mean"]
        rows.append({**{a: r[a] for a in AXES}, "cell_id": r["cell_id"], "gap": r["mean"],
                     "gap_0": gap0,
                     "reduction_pct": 100 * (gap0 - r["mean"]) / abs(gap0) if gap0 else np.nan,
                     "val_delta": (float(val.iloc[0]) - float(val0.iloc[0]))
                     if len(val) and len(val0) else np.nan,
                     "complete": bool(r["complete"] and b_gap["complete"].iloc[0])})
    return pd.DataFrame(rows, columns=columns)


def curves_table(trials: pd.DataFrame, epochs: pd.DataFrame,
                 metric: str = "headline") -> pd.DataFrame:
    """Train-probe and val ``metric`` per epoch, mean and 95% CI over completed seeds.

    Columns: ``cell_id, *AXES, epoch, split (probe|val), mean, lo, hi, n``.
    """
    if trials.empty or epochs.empty:
        return pd.DataFrame(columns=["cell_id", *AXES, "epoch", "split", "mean", "lo", "hi",
                                     "n"])
    t = with_axes(trials)
    done = t[t["status"] == "completed"][["trial_id", "cell_id", *AXES]]
    e = epochs.drop(columns=["cell_id"]).merge(done, on="trial_id", how="inner")
    rows = []
    for (cell_id, epoch), g in e.groupby(["cell_id", "epoch"], sort=True):
        head = g.iloc[0]
        for split in ("probe", "val"):
            col = f"{split}/{metric}"
            if col not in g:
                continue
            agg = aggregate(g[col].tolist())
            rows.append({"cell_id": cell_id, **{a: head[a] for a in AXES}, "epoch": int(epoch),
                         "split": split, "mean": agg.mean, "lo": agg.lo, "hi": agg.hi,
                         "n": agg.n})
    return pd.DataFrame(rows, columns=["cell_id", *AXES, "epoch", "split", "mean", "lo", "hi",
                                       "n"])


BEST_COLUMNS = ["model", "dataset", "triplets", "variant", "best_cell", "best_kind",
                "best_radius", "mean", "lo", "hi", "n", "zero_mean", "zero_lo", "zero_hi",
                "zero_n", "delta", "p_value", "p_holm", "beats_zero", "verdict"]


def best_table(trials: pd.DataFrame, metric: str = "val/headline",
               alpha: float = 0.05) -> pd.DataFrame:
    """Per model, dataset, training-set size and variant: the best cell by mean ``metric``,
    and whether it beats the unperturbed cell beyond the seed noise.

    Every perturbed cell of a group is tested against the unperturbed one (one-sided Welch
    t-test); the p-values are Holm-corrected over the group, since picking the best of k
    cells and testing it alone would call noise a win about k times too often. The best
    cell "beats zero" if its corrected p < ``alpha``. ``verdict`` says which case holds:
    ``no perturbation is best``, ``beats no perturbation``, ``within the seed noise``,
    ``too few seeds to test`` (fewer than 2 on a side), ``no unperturbed cell``.
    """
    if trials.empty:
        return pd.DataFrame(columns=BEST_COLUMNS)
    t = with_axes(trials)
    done = t[t["status"] == "completed"]
    rows = []
    keys = ["model", "dataset", "triplets", "variant"]
    for key, g in done.groupby(keys, sort=True, dropna=False):
        per_cell = {cid: c[f"last.{metric}"].dropna().tolist()
                    for cid, c in g.groupby("cell_id", sort=False)}
        per_cell = {c: v for c, v in per_cell.items() if v}
        if not per_cell:
            continue
        best_id = max(per_cell, key=lambda c: aggregate(per_cell[c]).mean)
        head = g[g["cell_id"] == best_id].iloc[0]
        best = aggregate(per_cell[best_id])
        zero_ids = [c for c in g[unperturbed(g)]["cell_id"].unique() if c in per_cell]
        zero_vals = per_cell[zero_ids[0]] if zero_ids else []
        zero = aggregate(zero_vals)
        p_value = p_holm = np.nan
        beats: bool | None = None
        if not zero_ids:
            verdict = "no unperturbed cell"
        elif best_id == zero_ids[0]:
            verdict, beats = "no perturbation is best", False
        elif best.n < 2 or zero.n < 2:
            verdict = "too few seeds to test"
        else:
            tested = {c: v for c, v in per_cell.items() if c != zero_ids[0] and len(v) >= 2}
            raw = {c: float(stats.ttest_ind(v, zero_vals, equal_var=False,
                                            alternative="greater").pvalue)
                   for c, v in tested.items()}
            p_value, p_holm = raw[best_id], holm(raw)[best_id]
            beats = bool(p_holm < alpha)
            verdict = "beats no perturbation" if beats else "within the seed noise"
        rows.append({**dict(zip(keys, key, strict=True)), "best_cell": head["cell"],
                     "best_kind": head["kind"], "best_radius": head["radius"],
                     "mean": best.mean, "lo": best.lo, "hi": best.hi, "n": best.n,
                     "zero_mean": zero.mean, "zero_lo": zero.lo, "zero_hi": zero.hi,
                     "zero_n": zero.n, "delta": best.mean - zero.mean, "p_value": p_value,
                     "p_holm": p_holm, "beats_zero": beats, "verdict": verdict})
    return pd.DataFrame(rows, columns=BEST_COLUMNS)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    order = sorted(p_values, key=p_values.get)
    m, running, out = len(order), 0.0, {}
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[key]))
        out[key] = running
    return out


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Mask of the non-dominated rows of ``points`` (maximise column 0, minimise column 1)."""
    n = len(points)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        a = points[i]
        dominated = ((points[:, 0] >= a[0]) & (points[:, 1] <= a[1])
                     & ((points[:, 0] > a[0]) | (points[:, 1] < a[1])))
        keep[i] = not dominated.any()
    return keep


def pareto_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Completed trials' (val headline, gap headline), with the per-cell Pareto front."""
    if trials.empty or "last.gap/headline" not in trials:
        return pd.DataFrame(columns=["cell_id", "cell", "trial_id", *AXES, "val", "gap",
                                     "params", "on_front"])
    t = with_axes(trials)
    done = t[(t["status"] == "completed")].dropna(subset=["last.val/headline",
                                                           "last.gap/headline"])
    rows = []
    for _cell_id, g in done.groupby("grid_cell_id", sort=False):
        pts = g[["last.val/headline", "last.gap/headline"]].to_numpy(dtype=float)
        front = pareto_front(pts)
        for (_, r), on in zip(g.iterrows(), front, strict=True):
            rows.append({"cell_id": r["grid_cell_id"], "cell": r["grid_cell"],
                         "trial_id": r["trial_id"],
                         **{a: r[a] for a in AXES},
                         "val": r["last.val/headline"], "gap": r["last.gap/headline"],
                         "params": r.get("search_params"), "on_front": bool(on)})
    return pd.DataFrame(rows, columns=["cell_id", "cell", "trial_id", *AXES, "val", "gap",
                                       "params", "on_front"])


def importance_table(trials: pd.DataFrame,
                     objectives: Sequence[tuple[str, str]] = (("val/headline", "max"),
                                                              ("gap/headline", "min"))
                     ) -> pd.DataFrame:
    """Optuna parameter importances per cell and objective, from the exported trials.

    An in-memory Optuna study is rebuilt from ``search_params`` and the last metrics (so
    the report needs no access to the study's database); distributions are inferred from
    the values seen. Needs >= 4 completed trials with >= 2 distinct values of a parameter.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t = trials[(trials["status"] == "completed") & trials["search_params"].notna()]
    rows = []
    for cell_id, g in t.groupby("cell_id", sort=False):
        params = [json.loads(p) for p in g["search_params"]]
        names = sorted({k for p in params for k in p})
        dists = {}
        for k in names:
            vals = [p[k] for p in params if k in p]
            if len({json.dumps(v) for v in vals}) < 2:
                continue
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
                lo, hi = float(min(vals)), float(max(vals))
                log = lo > 0 and hi / lo > 100
                dists[k] = optuna.distributions.FloatDistribution(lo, hi, log=log)
            else:
                dists[k] = optuna.distributions.CategoricalDistribution(
                    sorted({json.dumps(v) for v in vals}))
        if len(g) < 4 or not dists:
            continue
        for metric, mode in objectives:
            col = f"last.{metric}"
            if col not in g:
                continue
            study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
            for p, value in zip(params, g[col], strict=True):
                if value is None or not math.isfinite(value):
                    continue
                fixed = {k: (json.dumps(p[k]) if isinstance(
                    dists[k], optuna.distributions.CategoricalDistribution) else float(p[k]))
                    for k in dists if k in p}
                study.add_trial(optuna.trial.create_trial(
                    params=fixed, distributions={k: dists[k] for k in fixed}, value=value))
            try:
                imp = optuna.importance.get_param_importances(study)
            except (RuntimeError, ValueError):
                continue
            for param, value in imp.items():
                rows.append({"cell_id": cell_id, "cell": g["cell"].iloc[0], "objective": metric,
                             "param": param, "importance": float(value)})
    return pd.DataFrame(rows, columns=["cell_id", "cell", "objective", "param", "importance"])


def cost_table(trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Per cell: CPU/GPU hours, wall hours, second-pass share of training time, outcomes."""
    if trials.empty:
        return pd.DataFrame(columns=["cell_id", "cell", *AXES, "wall_hours", "cpu_hours",
                                     "gpu_hours", "second_pass_share", "epochs", "n_trials",
                                     "n_stopped_early", "n_errored"])
    t = with_axes(trials)
    share = pd.Series(dtype=float)
    if {"time/second_pass", "time/train"} <= set(epochs.columns):
        per_trial = epochs.groupby("trial_id")[["time/second_pass", "time/train"]].sum()
        share = per_trial["time/second_pass"] / per_trial["time/train"].where(
            per_trial["time/train"] > 0)
    rows = []
    for cell_id, g in t.groupby("cell_id", sort=False):
        wall = g["wall_time_s"].fillna(0)
        head = g.iloc[0]
        rows.append({"cell_id": cell_id, "cell": head["cell"], **{a: head[a] for a in AXES},
                     "wall_hours": float(wall.sum() / 3600),
                     "cpu_hours": float((wall * g["resources_cpu"].fillna(0)).sum() / 3600),
                     "gpu_hours": float((wall * g["resources_gpu"].fillna(0)).sum() / 3600),
                     "second_pass_share": float(share.reindex(g["trial_id"]).mean())
                     if len(share) else np.nan,
                     "epochs": int(g["epochs_done"].fillna(0).sum()),
                     "n_trials": len(g),
                     "n_stopped_early": int((g["status"] == "stopped_early").sum()),
                     "n_errored": int((g["status"] == "errored").sum())})
    return pd.DataFrame(rows)


@dataclass
class Tables:
    """Everything a report draws, computed from the export."""

    gaps: pd.DataFrame
    cells: pd.DataFrame
    reduction: pd.DataFrame
    curves: pd.DataFrame
    best: pd.DataFrame
    pareto: pd.DataFrame
    importances: pd.DataFrame
    cost: pd.DataFrame

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, df in self.__dict__.items():
            df.to_parquet(folder / f"{name}.parquet", index=False)


def compute(trials: pd.DataFrame, epochs: pd.DataFrame) -> Tables:
    gaps = gap_table(trials)
    searched = trials["search_params"].notna().any() if "search_params" in trials else False
    return Tables(
        # in a search, parameter sets are not perturbations to compare with radius 0
        gaps=gaps, cells=wide(gaps),
        reduction=reduction_table(gaps.iloc[0:0] if searched else gaps),
        curves=curves_table(trials, epochs), best=best_table(trials),
        pareto=pareto_table(trials) if searched else pareto_table(trials.iloc[0:0]),
        importances=importance_table(trials) if searched else importance_table(
            trials.iloc[0:0]),
        cost=cost_table(trials, epochs))
