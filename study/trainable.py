"""The Ray Tune function trainable: one trial = one ``wrf4cir.fit``.

It rebuilds the trial's training config from the study (``base`` + grid cell + Optuna
params + repeat seed), reports every epoch with ``tune.report``, hands each checkpoint
``fit`` writes to Tune as a ``tune.Checkpoint``, and on a restart continues from
``tune.get_checkpoint()``, not from epoch 0 (from an older checkpoint if that one is
unreadable; see :func:`restore`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import ray
from ray import tune

from study.spec import Study, parse_spec
from wrf4cir import EpochReport, NonFiniteLossError, fit
from wrf4cir.checkpoint import CheckpointError, load_checkpoint
from wrf4cir.config import Config

log = logging.getLogger(__name__)

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


def restore(checkpoint: tune.Checkpoint, dest: Path) -> tuple[Path | None, int, str | None]:
    """A readable copy of the trial's newest usable checkpoint, its epoch, what went wrong.

    Tune hands a restarted trial its latest checkpoint. If that one cannot be read (a
    write cut off, a damaged disk), the trial's older checkpoints in storage are tried,
    newest first; if none can be read the trial starts again from epoch 0. Returns
    ``(local copy or None, epoch it was saved after (0 if none), note)``; the note (None
    when all went well) says what happened.
    """
    broken: list[str] = []
    for candidate in [checkpoint, *_older_checkpoints(checkpoint)]:
        name = Path(candidate.path).name
        local = dest / name
        try:
            candidate.to_directory(str(local))
            # weights_only: a checkpoint cannot run code; the epoch is the one fit resumes
            # after (meta.json is only a summary, and may be the part that was lost)
            epoch = int(load_checkpoint(local)["epoch"])
        except (CheckpointError, OSError, KeyError, TypeError, ValueError) as exc:
            reason = str(exc).split(": ", 1)[-1].removeprefix("unreadable checkpoint ")
            broken.append(f"{name} {reason}")
            shutil.rmtree(local, ignore_errors=True)
            log.warning("checkpoint %s of this trial is unreadable: %s", candidate.path, exc)
            continue
        if not broken:
            return local, epoch, None
        note = f"unreadable: {'; '.join(broken)}; resumed from the older {name} (epoch {epoch})"
        log.warning(note)
        return local, epoch, note
    note = f"unreadable: {'; '.join(broken)}; no readable checkpoint left, restarted from epoch 0"
    log.warning(note)
    return None, 0, note


def tune_checkpoints(filesystem: Any, trial_path: str) -> list[str]:
    """Paths of the checkpoints Tune keeps for a trial in storage, oldest first.

    Tune keeps a trial's last ``checkpoint.keep`` checkpoints side by side in its folder,
    as ``checkpoint_000006/``, ``checkpoint_000007/``, ...
    """
    from pyarrow import fs as pafs

    infos = filesystem.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.Directory
                  and i.base_name.startswith("checkpoint_"))


def _older_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    parent, name = os.path.split(checkpoint.path.rstrip("/"))
    try:
        paths = tune_checkpoints(checkpoint.filesystem, parent)
    except OSError:
        return []
    return [tune.Checkpoint(path, filesystem=checkpoint.filesystem)
            for path in reversed(paths) if os.path.basename(path) < name]


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
        start, note = 0, None
        if tune.get_checkpoint() is not None:
            # continue from what Tune restored, not from epoch 0
            local, start, note = restore(tune.get_checkpoint(), out_dir / "restored")
            if local is not None:
                config.run.resume = str(local)
        constants = {"cell": trial_params[CELL], "max_epochs": float(config.optim.epochs),
                     "hostname": socket.gethostname(), "diverged": 0.0,
                     # which Ray node ran it (Tune adds the process id as "pid")
                     "node_id": ray.get_runtime_context().get_node_id(),
                     "trial/resumed_from": float(start)}

        def report(r: EpochReport) -> None:
            nonlocal note
            metrics = {**r.metrics, **constants}
            if note:  # the driver records it with the trial (once)
                metrics["note"], note = note, None
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
            tune.report({**constants, "diverged": 1.0, "error": str(exc),
                         **({"note": note} if note else {})})
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    train_cir.__name__ = "train_cir"
    return train_cir
