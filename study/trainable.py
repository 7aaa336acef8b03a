"""The Ray Tune function trainable: one trial = one ``wrf4cir.fit``.

It rebuilds the trial's training config from the study (``base`` + grid cell + Optuna
params + repeat seed), reports every epoch with ``tune.report``, hands each checkpoint
``fit`` writes to Tune as a ``tune.Checkpoint``, and on a restart continues from
``tune.get_checkpoint()``, not from epoch 0. Only ``ray.tune.*`` names are used here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from ray import tune

from study.spec import Study, parse_spec
from wrf4cir import EpochReport, NonFiniteLossError, fit
from wrf4cir.checkpoint import checkpoint_epoch
from wrf4cir.config import Config

# keys of a trial's Tune config (what the searcher or the grid produce)
CELL, REPEAT, PARAMS = "cell", "repeat", "params"


def trial_config(study: Study, trial_params: dict[str, Any], out_dir: Path,
                 resources_cpu: float) -> Config:
    """The wrf4cir config of a trial, with its run settings for a Tune worker."""
    cell = study.cell(trial_params[CELL])
    data = study.config_dict(cell, int(trial_params.get(REPEAT, 0)),
                             trial_params.get(PARAMS) or {})
    run = data.setdefault("run", {})
    run.update(out_dir=str(out_dir), progress=False,
               threads=max(1, math.floor(resources_cpu)),
               checkpoint_every=study.spec.checkpoint.every,
               keep_checkpoints=study.spec.checkpoint.keep)
    return Config.from_dict(data)


_STUDIES: dict[str, Study] = {}


def _study(spec_data: dict[str, Any]) -> Study:
    # reused actors run many trials: validate the spec once per process
    key = json.dumps(spec_data, sort_keys=True)
    if key not in _STUDIES:
        _STUDIES[key] = parse_spec(spec_data)
    return _STUDIES[key]


def make_trainable(spec_data: dict[str, Any], cache_dir: str | None):
    """The function trainable for a study (the spec travels as plain data)."""

    def train_cir(trial_params: dict[str, Any]) -> None:
        if cache_dir:  # share generated data and pre-trained backbones with the driver
            os.environ["WRF4CIR_CACHE"] = cache_dir
        study = _study(spec_data)
        cpu = float(study.spec.resources.cpu)
        # per trial: a reused actor may run several trials in the same directory
        out_dir = Path(os.getcwd()) / f"fit-{tune.get_context().get_trial_id()}"
        config = trial_config(study, trial_params, out_dir, cpu)
        checkpoint = tune.get_checkpoint()
        start = 0
        if checkpoint is not None:
            # continue from what Tune restored, not from epoch 0
            restored = out_dir / "restored"
            restored.mkdir(parents=True, exist_ok=True)
            local = checkpoint.to_directory(str(restored))
            config.run.resume = str(local)
            start = checkpoint_epoch(local) or 0
        constants = {"cell": trial_params[CELL], "max_epochs": float(config.optim.epochs),
                     "hostname": socket.gethostname(), "diverged": 0.0,
                     "trial/resumed_from": float(start)}

        def report(r: EpochReport) -> None:
            metrics = {**r.metrics, **constants}
            if r.checkpoint is not None:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(r.checkpoint)))
                # Tune has copied it to the study's storage; the local copy would only fill
                # the worker's disk (Ray never cleans its session folders)
                shutil.rmtree(r.checkpoint, ignore_errors=True)
            else:
                tune.report(metrics)

        try:
            fit(config, callbacks=[report])
        except NonFiniteLossError as exc:
            # deterministic: retrying would diverge again; end the trial and say why
            tune.report({**constants, "diverged": 1.0, "error": str(exc)})
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    train_cir.__name__ = "train_cir"
    return train_cir
