"""``wrf4cir-study status``: what a study has done, from the ledger alone.

Works while the study runs (the ledger is read-only here), after a crash and when it
is finished; says which of those it is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from study.export import status_counts
from study.ledger import FILENAME as LEDGER_FILE
from study.ledger import Ledger
from study.report.tables import Aggregate, aggregate
from study.runner import is_locked, load_study


def study_status(study_dir: str | Path) -> str:
    """A short human-readable report of a study's state."""
    study_dir = Path(study_dir).expanduser().resolve()
    study, meta = load_study(study_dir)
    ledger = Ledger(study_dir / LEDGER_FILE, readonly=True)
    trials = ledger.trials()
    last_epoch: dict[str, dict[str, Any]] = {}
    for row in ledger.epochs():
        last_epoch[row["trial_key"]] = row
    counts = status_counts(trials)
    unfinished = counts["running"] + counts["pending"]
    if is_locked(study_dir):
        state = "running (a driver holds the lock)"
    elif any(r["status"] != "finished" for r in meta["runs"]) or unfinished:
        state = f"interrupted: continue with `wrf4cir-study resume {study_dir}`"
    else:
        state = "finished"
    lines = [f"study {meta['name']} ({study_dir})", f"state: {state}",
             f"runs: {', '.join(r['id'] + ' ' + r['status'] for r in meta['runs'])}",
             "trials: " + ", ".join(f"{v} {k}" for k, v in counts.items())
             + f" (planned per run: {study.trials_planned})"]
    objective = study.objectives[0]
    scored = [(t, last_epoch[t["trial_key"]].get(objective.metric)) for t in trials
              if t["trial_key"] in last_epoch]
    scored = [(t, v) for t, v in scored if isinstance(v, int | float) and math.isfinite(v)]
    if scored:
        pick = max if objective.mode == "max" else min
        best, value = pick(scored, key=lambda tv: tv[1])
        lines.append(f"best {objective.metric} ({objective.mode}): {value:.2f} "
                     f"[{best['trial_key']}, {best.get('cell_label') or ''}".rstrip(", ") + "]")
    cells: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        cells.setdefault(t.get("cell_label") or "?", []).append(t)
    if len(cells) > 1 or study.spec.grid:
        lines.append("per cell: completed/total, last val/headline and gap/headline "
                     "(mean [95% t-interval] over completed seeds):")
        for label, ts in cells.items():
            done = [t for t in ts if t["status"] == "completed"]
            vals = [last_epoch[t["trial_key"]] for t in done if t["trial_key"] in last_epoch]
            val = _show(aggregate([v.get("val/headline", math.nan) for v in vals]))
            gap = _show(aggregate([v.get("gap/headline", math.nan) for v in vals]))
            lines.append(f"  {label}: {len(done)}/{len(ts)}  val {val}  gap {gap}")
    errored = [t for t in trials if t["status"] == "errored"]
    for t in errored[:5]:
        lines.append(f"errored {t['trial_key']}: {t.get('error') or '?'}")
    if len(errored) > 5:
        lines.append(f"... and {len(errored) - 5} more errored trials (see trials.parquet)")
    troubled = [t for t in trials if t.get("notes") and t["status"] != "errored"]
    for t in troubled[:5]:
        last = t["notes"].splitlines()[-1]
        lines.append(f"recovered {t['trial_key']} ({t.get('failures') or 0} failures): {last}")
    return "\n".join(lines)


def _show(agg: Aggregate) -> str:
    if agg.n == 0:
        return "-"
    if agg.n == 1:
        return f"{agg.mean:.2f}"
    return f"{agg.mean:.2f} [{agg.lo:.2f}, {agg.hi:.2f}]"
