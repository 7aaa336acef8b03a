"""Assemble the report: tables -> figures -> summary.md and a self-contained index.html."""

from __future__ import annotations

import base64
import logging
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import matplotlib.pyplot as plt
import pandas as pd

from study.report import figures as F
from study.report.tables import Tables, aggregate, compute, load_export, unperturbed

log = logging.getLogger(__name__)


@dataclass
class Figure:
    name: str  # file stem
    caption: str
    png: bytes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80]


def _save(fig: plt.Figure | None, name: str, caption: str, folder: Path) -> Figure | None:
    if fig is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    stem = _slug(name)
    fig.savefig(folder / f"{stem}.png", dpi=120)
    fig.savefig(folder / f"{stem}.svg")
    plt.close(fig)
    return Figure(stem, caption, (folder / f"{stem}.png").read_bytes())


def _facets(df: pd.DataFrame, keys: list[str]) -> list[tuple[str, str, pd.DataFrame]]:
    """``(title, file suffix, rows)`` per combination of ``keys`` that varies in ``df``."""
    varying = [k for k in keys if df[k].astype(str).nunique() > 1]
    if not varying:
        return [("", "", df)]
    out = []
    for values, g in df.groupby(varying, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        parts = [f"{k}={int(v) if k == 'triplets' and pd.notna(v) else v}"
                 for k, v in zip(varying, values, strict=True)]
        out.append((", ".join(parts), "-" + "-".join(parts), g))
    return out


def draw(t: Tables, folder: Path) -> list[Figure]:
    """Every figure the tables support, saved as PNG and SVG.

    Heatmaps and curves are drawn per dataset and, where the study varies them, per
    training-set size and variant, so no two cells ever share a square or a line.
    """
    out: list[Figure | None] = []
    cells = t.cells
    searched = bool((cells["cell_id"] != cells["grid_cell_id"]).any())
    if searched:
        # a search: per grid cell, the parameter set with the best held-out recall; its
        # reductions and curves would compare parameter sets, not perturbations, so the
        # Pareto front and the importances are its views
        cells = (cells.sort_values("val/headline", ascending=False)
                 .drop_duplicates("grid_cell_id"))
    for title, suffix, g in _facets(cells, ["triplets", "variant"]):
        facet = f" ({title})" if title else ""
        out.append(_save(F.gap_models_datasets(g), f"gap-model-dataset{suffix}",
                         "The generalization gap without perturbation, per model and dataset "
                         f"(mean over seeds, 95% t-interval in brackets){facet}.", folder))
    for dataset in sorted(cells["dataset"].dropna().unique()):
        d = cells[cells["dataset"] == dataset]
        for title, suffix, g in _facets(d, ["triplets", "variant"]):
            name = f"{dataset}{' (' + title + ')' if title else ''}"
            out.append(_save(F.by_radius(g, dataset, "gap/headline",
                                         f"{name}: gap by perturbation and model", center=0.0,
                                         cmap="RdBu_r", label="gap (recall points)"),
                             f"gap-radius-model-{dataset}{suffix}",
                             f"{name}: the gap for each perturbation (rows) and model.", folder))
            out.append(_save(F.by_radius(g, dataset, "val/headline",
                                         f"{name}: held-out recall by perturbation and model",
                                         center=None, cmap="cividis", label="val headline"),
                             f"val-radius-model-{dataset}{suffix}",
                             f"{name}: validation headline recall for each perturbation and "
                             "model.", folder))
        red = t.reduction[t.reduction["dataset"] == dataset]
        for title, suffix, g in _facets(red, ["triplets", "variant"]) if not searched else []:
            out.append(_save(F.reduction_heatmap(g, dataset), f"reduction-{dataset}{suffix}",
                             f"{dataset}{' (' + title + ')' if title else ''}: relative gap "
                             "reduction versus no perturbation (positive: narrower gap), with "
                             "the change in validation recall.", folder))
        for (model, variant), g in d.groupby(["model", "variant"], sort=True):
            if searched:
                break
            name = f"{dataset}, {model}{', ' + variant if variant else ''}"
            out.append(_save(F.gap_by_triplets(g, f"{name}: gap by training-set size"),
                             _slug(f"gap-triplets-{dataset}-{model}-{variant}"),
                             f"{name}: the gap as the number of training triplets grows.",
                             folder))
    for (dataset, model), g in ([] if searched else
                                t.curves.groupby(["dataset", "model"], sort=True)):
        for title, suffix, h in _facets(g, ["triplets", "variant"]):
            name = f"{dataset}, {model}{', ' + title if title else ''}"
            out.append(_save(F.curves(h, name), f"curves-{dataset}-{model}{suffix}",
                             f"{name}: where train-probe and validation recall part, per "
                             "epoch (mean and 95% band over seeds).", folder))
    for cell_id in t.pareto["cell_id"].unique():
        cell = t.pareto[t.pareto["cell_id"] == cell_id]["cell"].iloc[0]
        out.append(_save(F.pareto(t.pareto, cell_id), f"pareto-{cell_id}",
                         f"Search trade-off in cell {cell}: held-out recall against gap.",
                         folder))
    for cell_id in t.importances["cell_id"].unique():
        cell = t.importances[t.importances["cell_id"] == cell_id]["cell"].iloc[0]
        out.append(_save(F.importances(t.importances, cell_id), f"importance-{cell_id}",
                         f"Which searched parameters matter, per objective, in cell {cell}.",
                         folder))
    return [f for f in out if f is not None]


# ---------------------------------------------------------------------------------------
# findings in words


def _fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(mean: float, lo: float, hi: float) -> str:
    if math.isnan(lo):
        return _fmt(mean)
    return f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]"


def findings(trials: pd.DataFrame, t: Tables) -> list[str]:
    """Plain statements computed from the tables; they say what the data do *not* show too."""
    lines: list[str] = []
    cells = t.cells
    if cells.empty:
        return ["No trial has reported an epoch yet: nothing to summarise."]
    seeds = sorted(set(cells["n_completed"]))
    searched = "search_params" in trials and trials["search_params"].notna().any()
    if searched:
        lines.append("This study is a search: each parameter set ran once, so per-"
                     "configuration numbers have no intervals; the Pareto front and the "
                     "parameter importances summarise it.")
    elif seeds == [1]:
        lines.append("Every cell has one completed seed: there are no confidence intervals, "
                     "and differences of a few recall points are within run-to-run noise. "
                     "Use `repeat` >= 3 to separate effects from noise.")
    else:
        lines.append(f"Seeds per cell: {', '.join(map(str, seeds))}; intervals are 95% "
                     "t-intervals over seeds.")
    zero = cells[unperturbed(cells)].dropna(
        subset=["gap/headline"])
    if not zero.empty:
        pos = int((zero["gap/headline"] > 0).sum())
        lo_row = zero.loc[zero["gap/headline"].idxmin()]
        hi_row = zero.loc[zero["gap/headline"].idxmax()]
        lines.append(
            f"Without perturbation the train probe is ahead of validation in {pos} of "
            f"{len(zero)} model-dataset cells; the headline gap ranges from "
            f"{_fmt(lo_row['gap/headline'])} ({lo_row['model']}, {lo_row['dataset']}) to "
            f"{_fmt(hi_row['gap/headline'])} ({hi_row['model']}, {hi_row['dataset']}) recall "
            "points.")
    red = t.reduction
    if not red.empty:
        for (kind, radius), g in red.groupby(["kind", "radius"], sort=True):
            label = F.perturbation_label(kind, radius)
            narrower = int((g["reduction_pct"] > 0).sum())
            better = int((g["val_delta"] > 0).sum())
            lines.append(
                f"{label}: the gap is narrower in {narrower} of {len(g)} cells (mean reduction "
                f"{_fmt(g['reduction_pct'].mean(), 0)}%), and held-out recall is higher in "
                f"{better} of {len(g)} (mean change {_fmt(g['val_delta'].mean())} points).")
        both = red[(red["reduction_pct"] > 0) & (red["val_delta"] > 0)]
        if both.empty:
            lines.append("No perturbed cell both narrows the gap and raises held-out recall: "
                         "at this scale the paper's effect (a narrower gap *and* better "
                         "held-out recall) does not appear; narrower gaps come from lower "
                         "train-probe recall, not higher validation recall.")
        else:
            names = ", ".join(f"{F.perturbation_label(r.kind, r.radius)} on {r.model}/"
                              f"{r.dataset}" for r in both.itertuples())
            lines.append(f"Cells where the perturbation narrows the gap and raises held-out "
                         f"recall (the paper's effect): {names}.")
    best = t.best
    if not best.empty and not searched:
        counts = best["verdict"].value_counts()
        parts = [f"{n} of {len(best)}: {verdict}" for verdict, n in counts.items()]
        lines.append("Best configuration by held-out recall, per model and dataset (a "
                     "perturbation beats none only if a one-sided Welch test, Holm-corrected "
                     "over the perturbations tried, gives p < 0.05): " + "; ".join(parts) + ".")
    incomplete = cells[~cells["complete"].astype(bool)]
    if len(incomplete):
        lines.append(f"{len(incomplete)} cell(s) have seeds that did not complete (stopped "
                     "early, errored or unfinished); they are marked * and averaged only "
                     "over their completed seeds: " + "; ".join(
                         f"{r.cell} ({r.n_completed}/{r.n_trials})"
                         for r in incomplete.itertuples()))
    cost = t.cost
    if not cost.empty:
        perturbed = cost[cost["second_pass_share"] > 0]
        text = (f"Cost: {_fmt(cost['cpu_hours'].sum(), 2)} CPU hours and "
                f"{_fmt(cost['gpu_hours'].sum(), 2)} GPU hours over {int(cost['n_trials'].sum())}"
                " trials")
        if len(perturbed):
            share = aggregate(perturbed["second_pass_share"].tolist())
            text += (f"; in perturbed trials the second pass takes {_fmt(100 * share.mean, 0)}%"
                     " of training time")
        n_stop, n_err = int(cost["n_stopped_early"].sum()), int(cost["n_errored"].sum())
        lines.append(text + f"; {n_stop} trial(s) stopped early, {n_err} errored.")
    return lines


# ---------------------------------------------------------------------------------------
# documents

_TEMPLATE = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Study {{ name }}: generalization gaps</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}
table{border-collapse:collapse;font-size:.85em;margin:.8em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right}th{background:#f5f5f5}
td:first-child,th:first-child{text-align:left}
.meta{color:#666;font-size:.9em}
</style></head><body>
<h1>Study <code>{{ name }}</code>: generalization gaps</h1>
<p class="meta">{{ n_trials }} trials ({{ status }}); report made {{ when }} from the parquet
export. Values are each trial's last epoch; aggregates over completed seeds only.</p>
<h2>Findings</h2>
<ul>{% for line in findings %}<li>{{ line }}</li>{% endfor %}</ul>
<h2>Figures</h2>
{% for fig in figures %}
<figure><img alt="{{ fig.caption }}" src="data:image/png;base64,{{ fig.b64 }}">
<figcaption>{{ fig.caption }} (<a href="figures/{{ fig.name }}.svg">SVG</a>)</figcaption>
</figure>
{% endfor %}
<h2>Gap table</h2>
<p>Per grid cell: headline recall on validation and on the train probe, the gap, each as
mean [95% t-interval] over completed seeds, and the seed counts.</p>
{{ cells_table|safe }}
{% if best_table %}<h2>Best configurations</h2>{{ best_table|safe }}{% endif %}
{% if reduction_table %}<h2>Gap reduction versus no perturbation</h2>{{ reduction_table|safe }}
{% endif %}
<h2>Cost</h2>{{ cost_table|safe }}
<p class="meta">Every number above is in <code>tables/*.parquet</code>.</p>
</body></html>
""")


def _html_table(df: pd.DataFrame) -> str:
    # pandas escapes every cell (escape=True): names from configs and data are safe here
    return df.to_html(index=False, escape=True, na_rep="-", float_format=lambda x: f"{x:.2f}",
                      border=0)


def _cells_display(cells: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "cell": cells["cell"],
        "seeds": [f"{r.n_completed}/{r.n_trials}" + (f" ({r.n_errored} errored)"
                                                     if r.n_errored else "")
                  for r in cells.itertuples()],
    })
    for m in ("val/headline", "probe/headline", "gap/headline"):
        if m in cells:
            out[m] = [_ci(a, b, c) for a, b, c in zip(cells[m], cells[f"{m} lo"],
                                                      cells[f"{m} hi"], strict=True)]
    return out


def _markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "(none)\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [(_fmt(v, 2) if isinstance(v, float) else str(v)).replace("|", "\\|")
                 for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_report(study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the study whose parquet export is in ``study_dir``."""
    study_dir = Path(study_dir).expanduser().resolve()
    out_dir = Path(out).expanduser().resolve() if out else study_dir / "report"
    trials, epochs = load_export(study_dir)
    tables = compute(trials, epochs)
    tables.save(out_dir / "tables")
    figs = draw(tables, out_dir / "figures")
    lines = findings(trials, tables)
    name = str(trials["study"].iloc[0]) if len(trials) else study_dir.name
    counts = trials["status"].value_counts().to_dict()
    status = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    best = tables.best.drop(columns=["best_cell"], errors="ignore")
    (out_dir / "index.html").write_text(_TEMPLATE.render(
        name=name, n_trials=len(trials), status=status,
        when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), findings=lines,
        figures=[{"name": f.name, "caption": f.caption,
                  "b64": base64.b64encode(f.png).decode()} for f in figs],
        cells_table=_html_table(_cells_display(tables.cells)),
        best_table=_html_table(best) if len(best) else "",
        reduction_table=_html_table(tables.reduction) if len(tables.reduction) else "",
        cost_table=_html_table(tables.cost.drop(columns=["cell_id"]))))
    md = [f"# Study `{name}`: generalization gaps", "",
          f"{len(trials)} trials ({status}). Values are each trial's last epoch; aggregates "
          "are means over completed seeds with 95% t-intervals.", "", "## Findings", ""]
    md += [f"- {line}" for line in lines]
    md += ["", "## Gap table", "", _markdown_table(_cells_display(tables.cells)),
           "## Best configurations", "", _markdown_table(best), "## Figures", ""]
    md += [f"- `figures/{f.name}.png`: {f.caption}" for f in figs]
    (out_dir / "summary.md").write_text("\n".join(md) + "\n")
    log.info("report written to %s", out_dir)
    return out_dir
