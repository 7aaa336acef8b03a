"""The study report: gaps across models, datasets and perturbation radii.

``build_report(study_dir)`` reads only the parquet export (``trials.parquet``,
``epochs.parquet``), computes the tables (:mod:`.tables`), draws the figures
(:mod:`.figures`) and writes ``<study_dir>/report/``::

    index.html          self-contained (figures embedded), opens offline
    summary.md          the findings in words, with the tables that back them
    figures/*.png|svg
    tables/*.parquet    every number drawn
"""

from __future__ import annotations

from study.report.render import build_report

__all__ = ["build_report"]
