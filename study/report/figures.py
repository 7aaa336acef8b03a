"""Then draw: thin seaborn renderers over the tables of :mod:`study.report.tables`.

Each function takes a table, returns a matplotlib Figure (or None when the table has
nothing to draw) and computes nothing beyond pivoting. Colour maps are colour-blind safe:
a diverging ``RdBu_r`` centred at 0 for gaps (red: the train probe ahead of validation,
i.e. overfitting; blue: the reverse), ``PuOr`` centred at 0 for gap reductions, and
``cividis`` for recall. Cells whose seeds did not all complete are marked with ``*``.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # no display: figures are files

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from study.report.tables import unperturbed  # noqa: E402

KIND_ORDER = ("none", "wrf", "random", "sam", "asam")
sns.set_theme(context="notebook", style="white")


def perturbation_label(kind: str, radius: float) -> str:
    """``"none"``, ``"wrf 0"``, ``"wrf 0.001"``: how a perturbation reads on an axis."""
    return "none" if kind == "none" else f"{kind} {radius:g}"


def _perturbation_order(df: pd.DataFrame) -> list[str]:
    # unperturbed rows first (none, then any kind at radius 0), then by kind and radius
    keys = sorted({(r != 0 and k != "none", KIND_ORDER.index(k) if k in KIND_ORDER else 99,
                    r, perturbation_label(k, r))
                   for k, r in zip(df["kind"], df["radius"], strict=True)})
    return [lbl for *_, lbl in keys]


def _annotations(values: pd.DataFrame, lo: pd.DataFrame | None, hi: pd.DataFrame | None,
                 incomplete: pd.DataFrame | None, fmt: str,
                 extra: pd.DataFrame | None = None) -> np.ndarray:
    out = np.empty(values.shape, dtype=object)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values.iat[i, j]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                out[i, j] = ""
                continue
            text = format(v, fmt)
            if lo is not None and hi is not None and not math.isnan(lo.iat[i, j]):
                text += f"\n[{format(lo.iat[i, j], fmt)}, {format(hi.iat[i, j], fmt)}]"
            if extra is not None and isinstance(extra.iat[i, j], str):
                text += f"\n{extra.iat[i, j]}"
            if incomplete is not None and bool(incomplete.iat[i, j]):
                text += " *"
            out[i, j] = text
    return out


def heatmap(df: pd.DataFrame, index: str, columns: str, value: str, title: str, *,
            lo: str | None = None, hi: str | None = None, center: float | None = 0.0,
            cmap: str = "RdBu_r", fmt: str = ".1f", label: str = "",
            row_order: list[str] | None = None, col_order: list[str] | None = None,
            extra: str | None = None) -> plt.Figure | None:
    """An annotated heatmap of ``value`` over ``index`` x ``columns`` (one row per cell)."""
    if df.empty or df[value].isna().all():
        return None
    if df.duplicated([index, columns]).any():  # a pivot would silently keep one of them
        raise ValueError(f"{title}: several cells share ({index}, {columns}); facet first")

    def pivot(col: str) -> pd.DataFrame:
        p = df.pivot_table(index=index, columns=columns, values=col, aggfunc="first",
                           dropna=False)
        if row_order:
            p = p.reindex([r for r in row_order if r in p.index])
        if col_order:
            p = p.reindex(columns=[c for c in col_order if c in p.columns])
        return p

    values = pivot(value)
    incomplete = None
    if "complete" in df:
        incomplete = (~df.assign(complete=df["complete"].astype(bool))
                      .pivot_table(index=index, columns=columns, values="complete",
                                   aggfunc="first", dropna=False).fillna(True).astype(bool))
        incomplete = incomplete.reindex(index=values.index, columns=values.columns,
                                        fill_value=False)
    annot = _annotations(values, pivot(lo) if lo else None, pivot(hi) if hi else None,
                         incomplete, fmt, pivot(extra) if extra else None)
    width = 2.2 + 2.0 * values.shape[1]
    height = 1.6 + 0.75 * values.shape[0]
    fig, ax = plt.subplots(figsize=(max(width, 4.5), max(height, 2.8)))
    kwargs = {}
    if center is not None:
        span = np.nanmax(np.abs(values.to_numpy(dtype=float) - center))
        span = span if span and not math.isnan(span) else 1.0
        kwargs = {"center": center, "vmin": center - span, "vmax": center + span}
    sns.heatmap(values.astype(float), annot=annot, fmt="", cmap=cmap, ax=ax, linewidths=0.5,
                linecolor="white", cbar_kws={"label": label or value},
                annot_kws={"fontsize": 9}, **kwargs)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(columns)
    ax.set_ylabel(index)
    ax.tick_params(axis="x", rotation=0)
    ax.tick_params(axis="y", rotation=0)
    if incomplete is not None and incomplete.to_numpy().any():
        fig.text(0.01, 0.01, "* not all seeds completed", fontsize=8)
    fig.tight_layout()
    return fig


def gap_models_datasets(cells: pd.DataFrame) -> plt.Figure | None:
    """The gap at radius 0 over model x dataset (the paper's overview)."""
    zero = cells[unperturbed(cells)]
    # kind none and radius 0 are the same training; show one of them (none first)
    zero = zero.sort_values("kind", key=lambda k: k != "none").drop_duplicates(
        ["model", "dataset"])
    return heatmap(zero, "model", "dataset", "gap/headline",
                   "Generalization gap without perturbation (train probe - val, headline)",
                   lo="gap/headline lo", hi="gap/headline hi",
                   label="gap (recall points)")


def by_radius(cells: pd.DataFrame, dataset: str, value: str, title: str, *,
              center: float | None, cmap: str, label: str) -> plt.Figure | None:
    d = cells[cells["dataset"] == dataset].copy()
    if d.empty:
        return None
    d["perturbation"] = [perturbation_label(k, r) for k, r in zip(d["kind"], d["radius"],
                                                                   strict=True)]
    return heatmap(d, "perturbation", "model", value, title, lo=f"{value} lo",
                   hi=f"{value} hi", center=center, cmap=cmap, label=label,
                   row_order=_perturbation_order(d))


def reduction_heatmap(reduction: pd.DataFrame, dataset: str) -> plt.Figure | None:
    d = reduction[reduction["dataset"] == dataset].copy()
    if d.empty:
        return None
    d["perturbation"] = [perturbation_label(k, r) for k, r in zip(d["kind"], d["radius"],
                                                                   strict=True)]
    # a narrower gap bought with lower held-out recall is no win: show both
    d["note"] = [f"val {v:+.1f}" if pd.notna(v) else None for v in d["val_delta"]]
    return heatmap(d, "perturbation", "model", "reduction_pct",
                   f"{dataset}: gap reduction versus no perturbation (%),\n"
                   "with the change in val headline", center=0.0, cmap="PuOr", fmt=".0f",
                   label="reduction of the gap (%)", row_order=_perturbation_order(d),
                   extra="note")


def gap_by_triplets(cells: pd.DataFrame, title: str) -> plt.Figure | None:
    """The gap over training-set size (rows) x perturbation (columns): the few-triplets view."""
    d = cells.dropna(subset=["triplets"]).copy()
    if d["triplets"].nunique() < 2:
        return None
    d["perturbation"] = [perturbation_label(k, r) for k, r in zip(d["kind"], d["radius"],
                                                                   strict=True)]
    d["triplets"] = d["triplets"].astype(int)
    return heatmap(d, "triplets", "perturbation", "gap/headline", title,
                   lo="gap/headline lo", hi="gap/headline hi", label="gap (recall points)",
                   col_order=_perturbation_order(d))


def curves(curves_df: pd.DataFrame, title: str) -> plt.Figure | None:
    """Train-probe (dashed) and val (solid) headline per epoch, one colour per perturbation.

    ``curves_df`` holds one facet (one dataset, model, training-set size and variant).
    """
    d = curves_df.copy()
    if d.empty:
        return None
    d["perturbation"] = [perturbation_label(k, r) for k, r in zip(d["kind"], d["radius"],
                                                                   strict=True)]
    order = _perturbation_order(d)
    palette = dict(zip(order, sns.color_palette("colorblind", len(order)), strict=True))
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for pert in order:
        for split, style in (("probe", "--"), ("val", "-")):
            g = d[(d["perturbation"] == pert) & (d["split"] == split)].sort_values("epoch")
            if g.empty:
                continue
            ax.plot(g["epoch"], g["mean"], style, color=palette[pert], marker="o", ms=3,
                    label=f"{pert} ({'train probe' if split == 'probe' else 'val'})")
            if g["lo"].notna().any():
                ax.fill_between(g["epoch"], g["lo"], g["hi"], color=palette[pert], alpha=0.15,
                                linewidth=0)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("headline recall")
    ax.set_title(f"{title}: train probe (dashed) vs val (solid)", fontsize=11)
    ax.legend(fontsize=7, ncol=2, frameon=False, loc="upper center",
              bbox_to_anchor=(0.5, -0.18))
    sns.despine(fig)
    fig.tight_layout()
    return fig


def pareto(pareto_df: pd.DataFrame, cell_id: str) -> plt.Figure | None:
    d = pareto_df[pareto_df["cell_id"] == cell_id]
    if d.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    sns.scatterplot(data=d, x="gap", y="val", hue="on_front", palette="colorblind", ax=ax,
                    s=40)
    front = d[d["on_front"]].sort_values("gap")
    ax.plot(front["gap"], front["val"], "-", color="black", lw=1)
    ax.set_xlabel("gap/headline (lower is better)")
    ax.set_ylabel("val/headline (higher is better)")
    ax.set_title(f"Pareto front: {d['cell'].iloc[0]}", fontsize=10)
    ax.legend(title="on front", fontsize=8)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def importances(imp: pd.DataFrame, cell_id: str) -> plt.Figure | None:
    d = imp[imp["cell_id"] == cell_id]
    if d.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 0.6 + 0.45 * d["param"].nunique() * 2))
    sns.barplot(data=d, y="param", x="importance", hue="objective", palette="colorblind",
                ax=ax, orient="h")
    ax.set_title(f"Optuna parameter importances: {d['cell'].iloc[0]}", fontsize=10)
    sns.despine(fig)
    fig.tight_layout()
    return fig
