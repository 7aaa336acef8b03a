"""Optuna search through Ray Tune's ``OptunaSearch``, one Optuna study per grid cell.

- Each grid cell gets its own ``OptunaSearch`` whose Optuna study lives in the study
  folder's SQLite storage (``optuna.db``, study name ``<study>/<cell id>``), so
  ``optuna.load_study`` and optuna-dashboard open the search afterwards, and a resumed or
  extended study continues the same history.
- :class:`CellSearcher` hands out trials across the cells round-robin, so the cells' trials
  share the cluster at the same time, and routes every result back to its cell's search.
- :class:`HonestOptunaSearch` records what really happened: a trial the scheduler stopped
  early is PRUNED (Ray's OptunaSearch would record its truncated value as COMPLETE); a
  trial that errored or diverged is FAIL; and an errored trial that a resume re-runs to
  completion is added again with its real values (Ray's would ignore the re-run).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study.spec import Cell, Distribution, SearchSpec
from study.trainable import CELL, PARAMS, REPEAT

log = logging.getLogger(__name__)


def optuna_distributions(space: dict[str, Distribution]
                         ) -> dict[str, optuna.distributions.BaseDistribution]:
    """The spec's distributions as Optuna's."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, d in space.items():
        if d.kind == "choice":
            out[key] = optuna.distributions.CategoricalDistribution(d.choice)
        elif d.kind == "int":
            out[key] = optuna.distributions.IntDistribution(*d.int_)
        elif d.kind == "loguniform":
            out[key] = optuna.distributions.FloatDistribution(*d.loguniform, log=True)
        else:
            out[key] = optuna.distributions.FloatDistribution(*d.uniform)
    return out


def make_sampler(search: SearchSpec, seed: int) -> optuna.samplers.BaseSampler:
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "grid":
        return optuna.samplers.GridSampler({k: d.choice for k, d in search.space.items()},
                                           seed=seed)
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def storage_url(study_dir: str) -> str:
    return f"sqlite:///{study_dir}/optuna.db"


class HonestOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna what really happened to each trial."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outcome: dict[str, TrialState] = {}

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # intermediate values only for a single objective (Optuna has none for several),
        # and a diverged trial's last report has no metric
        if not isinstance(self.metric, list) and self.metric in result:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        state, values, reason = self._judge(result, error)
        if trial_id in self._completed_trials:
            # a resumed study re-ran an errored trial: record the re-run as a new entry
            if self._outcome.get(trial_id) == TrialState.FAIL and state != TrialState.FAIL:
                old = self._ot_trials[trial_id]
                self._ot_study.add_trial(optuna.trial.create_trial(
                    state=state, values=values, params=old.params,
                    distributions=old.distributions,
                    user_attrs={"ray_trial_id": trial_id, "retry_of": old.number}))
                self._outcome[trial_id] = state
            return
        ot_trial = self._ot_trials[trial_id]
        if reason:
            ot_trial.set_user_attr("outcome", reason)
        try:
            self._ot_study.tell(ot_trial, values, state=state)
        except Exception as exc:  # noqa: BLE001
            stored = self._ot_study._storage.get_trial(ot_trial._trial_id)
            if stored.state.is_finished():
                # told; the sampler complained afterwards (GridSampler calls study.stop(),
                # which Optuna only allows inside study.optimize)
                state = stored.state
            else:  # refused, e.g. a NaN value
                log.warning("optuna refused trial %s (%s); recording it as failed",
                            trial_id, exc)
                self._ot_study.tell(ot_trial, None, state=TrialState.FAIL)
                state = TrialState.FAIL
        self._completed_trials.add(trial_id)
        self._outcome[trial_id] = state

    def _judge(self, result: dict | None, error: bool
               ) -> tuple[TrialState, list[float] | float | None, str]:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if error or not result:
            return TrialState.FAIL, None, "errored"
        if result.get("diverged"):
            return TrialState.FAIL, None, f"diverged: {result.get('error', '')}"[:500]
        if result.get("epoch", 0) < result.get("max_epochs", 0):
            return TrialState.PRUNED, None, "stopped early by the scheduler"
        values = [result.get(m) for m in metrics]
        if any(v is None or not math.isfinite(v) for v in values):
            return TrialState.FAIL, None, "objective missing or not finite"
        return TrialState.COMPLETE, (values if isinstance(self.metric, list) else values[0]), ""


class CellSearcher(Searcher):
    """Round-robin over the grid cells, each tuned by its own Optuna study.

    Produces trial configs ``{"cell": id, "repeat": 0, "params": {key: value}}``;
    stops after ``samples_per_cell`` trials per cell.
    """

    def __init__(self, cells: list[Cell], search: SearchSpec, study_name: str, storage: str,
                 samples_per_cell: int, run_index: int = 0) -> None:
        objectives = search.objectives
        metric = [o.metric for o in objectives]
        mode = [o.mode for o in objectives]
        single = len(objectives) == 1
        super().__init__(metric=metric[0], mode=mode[0])
        self.cells = [c.id for c in cells]
        self.samples_per_cell = samples_per_cell
        self.subs: dict[str, HonestOptunaSearch] = {}
        for c in cells:
            self.subs[c.id] = HonestOptunaSearch(
                space=optuna_distributions(search.space),
                metric=metric[0] if single else metric,
                mode=mode[0] if single else mode,
                # each run (run, then each extend) seeds its samplers afresh: the same seed
                # would replay the random start-up trials of the earlier run
                sampler=make_sampler(search, search.seed + 1000 * run_index),
                study_name=f"{study_name}/{c.id}",
                storage=optuna.storages.RDBStorage(storage),
            )
        self.asked = {c: 0 for c in self.cells}
        self.trial_cell: dict[str, str] = {}
        self.live: set[str] = set()
        self.max_concurrent = 0  # 0: no limit of our own

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        # limit concurrency here rather than in Tune's ConcurrencyLimiter, which forgets an
        # errored trial, so a resume's successful re-run would never reach Optuna
        self.max_concurrent = max_concurrent
        return True

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # the objectives come from the spec, not from TuneConfig

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self.trial_cell:  # re-suggestion of a known trial
            cell = self.trial_cell[trial_id]
        else:
            if self.max_concurrent and len(self.live) >= self.max_concurrent:
                return None  # ask again when a trial ends
            open_cells = [c for c in self.cells if self.asked[c] < self.samples_per_cell]
            if not open_cells:
                return Searcher.FINISHED
            cell = min(open_cells, key=lambda c: (self.asked[c], self.cells.index(c)))
            self.asked[cell] += 1
            self.trial_cell[trial_id] = cell
        params = self.subs[cell].suggest(trial_id)
        self.subs[cell]._ot_trials[trial_id].set_user_attr("cell", cell)
        self.live.add(trial_id)
        return {CELL: cell, REPEAT: 0, PARAMS: params}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.trial_cell:
            self.subs[self.trial_cell[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        self.live.discard(trial_id)
        if trial_id in self.trial_cell:
            self.subs[self.trial_cell[trial_id]].on_trial_complete(trial_id, result, error)

    def optuna_ref(self, trial_id: str) -> tuple[str, int] | None:
        """``(optuna study name, trial number)`` of a Ray trial, if it was suggested here."""
        cell = self.trial_cell.get(trial_id)
        if cell is None:
            return None
        sub = self.subs[cell]
        return sub._study_name, sub._ot_trials[trial_id].number

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__, fh)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))
