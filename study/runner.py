"""Launching, resuming and extending studies on Ray Tune.

A study folder (``<storage>/<name>/``)::

    study.json        what the study is: spec, runs, versions (written atomically)
    ledger.sqlite     every trial and epoch, as they happen (study/ledger.py)
    optuna.db         the Optuna studies, one per grid cell (searches only)
    tune/run-000/     Ray Tune's experiment (trial checkpoints, its own state)
    trials.parquet    the export (``wrf4cir-study export``), and epochs.parquet
    driver.lock       held while a driver runs this study

Each ``run``/``extend`` is one Tune experiment ("run"); ``resume`` restores the runs
that did not finish (or have errored trials) with ``Tuner.restore``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from study.defaults import MIN_FREE_GB
from study.ledger import FILENAME as LEDGER_FILE
from study.ledger import Ledger
from study.spec import SpecError, Study, parse_spec
from wrf4cir import __version__

log = logging.getLogger(__name__)

META_FILE = "study.json"
LOCK_FILE = "driver.lock"


class StudyError(RuntimeError):
    """A study folder that cannot be used as asked (exists, missing, locked, ...)."""


# ---------------------------------------------------------------------------------------
# the study folder


def git_commit() -> str | None:
    """The commit of the source tree wrf4cir runs from, if it is a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def read_meta(study_dir: Path) -> dict[str, Any]:
    path = study_dir / META_FILE
    if not path.is_file():
        raise StudyError(f"{study_dir}: not a study folder (no {META_FILE})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StudyError(f"{path}: unreadable ({exc})") from None


def write_meta(study_dir: Path, meta: dict[str, Any]) -> None:
    tmp = study_dir / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, study_dir / META_FILE)


@contextmanager
def driver_lock(study_dir: Path) -> Iterator[None]:
    """Hold the study's driver lock; a second driver on the same study is refused."""
    lock = FileLock(str(study_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise StudyError(f"{study_dir}: another driver is running this study (it holds "
                         f"{LOCK_FILE}); wait for it, or stop it first") from None
    try:
        yield
    finally:
        lock.release()


def is_locked(study_dir: Path) -> bool:
    """Whether a driver holds the study's lock right now."""
    lock = FileLock(str(study_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def load_study(study_dir: Path, check_local: bool = False) -> tuple[Study, dict[str, Any]]:
    meta = read_meta(study_dir)
    return parse_spec(meta["spec"], check_local=check_local), meta


# ---------------------------------------------------------------------------------------
# preparing the machine


def check_resources(study: Study, address: str | None) -> None:
    """Refuse requests a local machine cannot satisfy (a cluster is checked by Ray)."""
    if address is not None:
        return
    import torch

    res = study.spec.resources
    cpus = os.cpu_count() or 1
    if res.cpu > cpus:
        raise SpecError(f"resources.cpu: {res.cpu:g} per trial, but this machine has {cpus} "
                        "CPUs (pass --address to use a cluster)")
    gpus = torch.cuda.device_count()
    if res.gpu > gpus:
        raise SpecError(f"resources.gpu: {res.gpu:g} per trial, but this machine has {gpus} "
                        "GPUs (pass --address to use a cluster)")




def free_bytes(path: Path) -> int:
    """Free space on the file system holding ``path`` (or its nearest existing parent)."""
    return shutil.disk_usage(_existing(path)).free


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_storage(study_dir: Path, ray_storage: str, min_free_gb: float) -> None:
    """Refuse to start where the study cannot write, or with less than ``min_free_gb`` free.

    Runs before anything is created or written: a write probe (a temporary file in the
    study folder, or in its nearest existing parent) and a free-space check; for a URI
    storage, a probe object written and deleted through Ray's file system layer.
    """
    if min_free_gb < 0:
        raise SpecError(f"--min-free-gb: expected >= 0, got {min_free_gb:g}")
    target = _existing(study_dir)
    if not target.is_dir():
        raise StudyError(f"{study_dir}: cannot create the study folder there ({target} is a "
                         "file, not a folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".wrf4cir-write-probe-", dir=target)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise StudyError(f"{study_dir}: cannot write there ({exc.strerror or exc}); choose "
                         "another --storage or fix its permissions") from None
    free = free_bytes(target)
    if free < min_free_gb * 2**30:
        raise StudyError(f"{study_dir}: only {free / 2**30:.2f} GiB free there, below the "
                         f"{min_free_gb:g} GiB a study needs to keep going (checkpoints, "
                         "ledger); free some space or lower --min-free-gb")
    if "://" in ray_storage:
        _probe_uri(ray_storage)


def _probe_uri(uri: str) -> None:
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        fs.create_dir(path, recursive=True)
        probe = f"{path.rstrip('/')}/.wrf4cir-write-probe"
        with fs.open_output_stream(probe) as fh:
            fh.write(b"ok")
        fs.delete_file(probe)
    except (OSError, ValueError) as exc:
        raise StudyError(f"--storage {uri}: cannot write there ({exc})") from None


def prewarm(study: Study) -> None:
    """Generate synthetic data and pre-train synthetic backbones once, on the driver.

    Otherwise every concurrent trial would wait for (or, on another node, repeat) them.
    """
    from wrf4cir.config import ConfigError
    from wrf4cir.data import DataError
    from wrf4cir.models import ModelError
    from wrf4cir.models.factory import SYNTHETIC_TAG
    from wrf4cir.pretrain import ensure_pretrained
    from wrf4cir.trainer import load_splits

    try:
        _prewarm(study, load_splits, ensure_pretrained, SYNTHETIC_TAG)
    except (ConfigError, DataError, ModelError) as exc:
        raise SpecError(str(exc)) from None


def _prewarm(study: Study, load_splits, ensure_pretrained, synthetic_tag: str) -> None:
    seen_data, seen_models = set(), set()
    for cell in study.cells:
        cfg = study.config(cell)
        data_key = (cfg.data.name, cfg.data.root, json.dumps(cfg.data.recipe, sort_keys=True))
        if cfg.data.name.startswith("synthetic") and data_key not in seen_data:
            seen_data.add(data_key)
            load_splits(cfg)
        if cfg.model.pretrained == synthetic_tag and cfg.model.name not in seen_models:
            seen_models.add(cfg.model.name)
            ensure_pretrained(cfg.model.name)


def init_ray(address: str | None, ship_code: bool, verbose: int,
             num_cpus: int | None = None) -> None:
    """Join ``address``, or start a local Ray instance with this machine's CPUs and GPUs."""
    import ray

    # our reports leave a diverged trial's last result without the objective
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Ray's newer console output ignores verbose=0; our ProgressCallback is the summary
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # tiny trials checkpoint every few seconds, which Tune would warn about at length
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    env_vars = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}
    if os.environ.get("WRF4CIR_CACHE"):
        env_vars["WRF4CIR_CACHE"] = os.environ["WRF4CIR_CACHE"]
    runtime_env: dict[str, Any] = {"env_vars": env_vars}
    if address is None:
        import torch

        ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=torch.cuda.device_count(),
                 include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=verbose > 0, logging_level=logging.WARNING)
        return
    if ship_code:  # workers without the package get it from the driver
        import study as study_pkg
        import wrf4cir as wrf4cir_pkg

        runtime_env["py_modules"] = [str(Path(wrf4cir_pkg.__file__).parent),
                                     str(Path(study_pkg.__file__).parent)]
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=verbose > 0,
             logging_level=logging.WARNING)


# ---------------------------------------------------------------------------------------
# Tune objects


def _trainable(study_dir: Path, meta: dict[str, Any]):
    from ray import tune

    from study.trainable import make_trainable

    res = meta["spec"].get("resources") or {}
    resources = {"cpu": float(res.get("cpu", 1.0)), "gpu": float(res.get("gpu", 0.0))}
    return tune.with_resources(make_trainable(meta["spec"], meta.get("cache_dir")), resources)


def _tuner(study: Study, study_dir: Path, meta: dict[str, Any], run: dict[str, Any],
           verbose: int, min_free_gb: float, extra_callbacks: Sequence[Any] = ()):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from study.callbacks import LedgerCallback, ProgressCallback, StorageGuard
    from study.search import CellSearcher, storage_url
    from study.trainable import CELL, PARAMS, REPEAT

    spec = study.spec
    objective = study.objectives[0]
    search_alg = None
    if spec.search:
        search_alg = CellSearcher(list(study.cells), spec.search, study.name,
                                  storage_url(str(study_dir)), run["samples_per_cell"],
                                  run_index=int(run["id"].split("-")[1]))
        param_space: dict[str, Any] = {}
        num_samples = run["samples_per_cell"] * len(study.cells)
    else:
        repeats = range(run["repeat_offset"], run["repeat_offset"] + run["repeats"])
        param_space = {CELL: tune.grid_search([c.id for c in study.cells]),
                       REPEAT: tune.grid_search(list(repeats)), PARAMS: {}}
        num_samples = 1
    scheduler = None
    if spec.scheduler:
        max_t = max(int(study.config(c).optim.epochs) for c in study.cells)
        searched_epochs = spec.search.space.get("optim.epochs") if spec.search else None
        if searched_epochs is not None:  # ASHA must not cut the longest searched trial
            max_t = max(max_t, *(int(v) for v in searched_epochs.values()))
        scheduler = ASHAScheduler(
            # not training_iteration: a trial that fell back to an older checkpoint
            # (or to epoch 0) has Tune's iteration count running ahead of its epochs
            time_attr="epoch",
            metric=spec.scheduler.metric or objective.metric,
            mode=spec.scheduler.mode or objective.mode,
            max_t=max_t, grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor)
    planned = num_samples if spec.search else len(study.cells) * run["repeats"]
    callbacks = [LedgerCallback(str(study_dir), run["id"], meta["spec"]),
                 StorageGuard(str(study_dir), min_free_gb),
                 ProgressCallback(f"{study.name} {run['id']}", objective.metric,
                                  objective.mode, planned), *extra_callbacks]
    return tune.Tuner(
        _trainable(study_dir, meta),
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=num_samples, search_alg=search_alg,
                                    scheduler=scheduler,
                                    max_concurrent_trials=spec.max_concurrent,
                                    # one worker process runs many trials: torch and
                                    # open_clip are imported once, not once per trial
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=run["id"], storage_path=meta["ray_storage"], callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.checkpoint.keep),
            verbose=min(verbose, 2)),
    )


def _fit(tuner: Any, study_dir: Path, meta: dict[str, Any], run: dict[str, Any]) -> None:
    run["status"] = "running"
    write_meta(study_dir, meta)
    tuner.fit()
    # Tune returns normally after Ctrl-C too (it saves its state first): trials left
    # running or pending mean the run was interrupted, not finished
    left = [t for t in Ledger(study_dir / LEDGER_FILE).trials()
            if t["run"] == run["id"] and t["status"] in ("running", "pending")]
    run["status"] = "interrupted" if left else "finished"
    run["ended"] = _now()
    write_meta(study_dir, meta)
    if left:
        log.warning("%s interrupted with %d trials unfinished; continue with "
                    "`wrf4cir-study resume %s`", run["id"], len(left), study_dir)
    reconcile_optuna(study_dir, meta)


def reconcile_optuna(study_dir: Path, meta: dict[str, Any]) -> None:
    """Mark Optuna trials left RUNNING by a dead driver as FAIL (they will never report)."""
    db = study_dir / "optuna.db"
    if not db.is_file() or any(r["status"] != "finished" for r in meta["runs"]):
        return
    import optuna
    from optuna.trial import TrialState

    from study.search import storage_url

    storage = optuna.storages.RDBStorage(storage_url(str(study_dir)))
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            storage.set_trial_user_attr(t._trial_id, "outcome",
                                        "lost: its driver stopped before it reported")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


_PATH_KEYS = ("data.root", "model.pretrained")


def absolute_paths(spec_data: dict[str, Any], cwd: Path | None = None) -> dict[str, Any]:
    """The spec with every relative path it names (``data.root``, a ``model.pretrained``
    file) made absolute against ``cwd``: Ray runs trials in their own directories."""
    cwd = cwd or Path.cwd()

    def fix(key: str, value: Any) -> Any:
        if not isinstance(value, str) or key not in _PATH_KEYS:
            return value
        if key == "model.pretrained" and os.sep not in value and not (cwd / value).is_file():
            return value  # an open_clip tag or 'synthetic', not a path
        return str((cwd / Path(value).expanduser()).resolve())

    def fix_section(section: str, values: dict[str, Any]) -> dict[str, Any]:
        return {k: fix(f"{section}.{k}", v) for k, v in values.items()}

    out = json.loads(json.dumps(spec_data))
    for section, values in (out.get("base") or {}).items():
        if isinstance(values, dict):
            out["base"][section] = fix_section(section, values)
    for axis, values in (out.get("grid") or {}).items():
        out["grid"][axis] = [fix_section(axis, v) if isinstance(v, dict) else fix(axis, v)
                             for v in values]
    for key, dist in ((out.get("search") or {}).get("space") or {}).items():
        if "choice" in dist:
            dist["choice"] = [fix(key, v) for v in dist["choice"]]
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------
# the three verbs


def run_study(study: Study, storage: str | Path = "results", name: str | None = None,
              address: str | None = None, ship_code: bool = True, verbose: int = 0,
              callbacks: Sequence[Any] = (), min_free_gb: float = MIN_FREE_GB) -> Path:
    """Launch a new study; returns its folder. Refuses an existing study folder, and
    storage it cannot write or that has less than ``min_free_gb`` GiB free.

    ``callbacks`` are extra Tune callbacks for this driver (the fault drill's injector);
    they must pickle, since Tune saves them with its experiment state.
    """
    name = name or study.name
    storage_str = str(storage)
    is_uri = "://" in storage_str
    study_dir = (Path("results") / name if is_uri else Path(storage_str) / name)
    study_dir = study_dir.expanduser().resolve()
    if (study_dir / META_FILE).exists():
        raise StudyError(f"{study_dir}: a study already lives here; use `wrf4cir-study resume "
                         f"{study_dir}` or `extend`, or choose another --name")
    check_resources(study, address)
    spec_data = absolute_paths(study.spec.model_dump(mode="json", exclude_none=True,
                                                     by_alias=True))
    spec_data["name"] = name
    ray_storage = f"{storage_str.rstrip('/')}/{name}" if is_uri else str(study_dir / "tune")
    check_storage(study_dir, ray_storage, min_free_gb)
    study_dir.mkdir(parents=True, exist_ok=True)
    with driver_lock(study_dir):
        meta = {
            "name": name, "created": _now(), "spec": spec_data,
            "source": str(study.source) if study.source else None,
            "wrf4cir_version": __version__, "git_commit": git_commit(),
            "ray_storage": ray_storage,
            "cache_dir": os.environ.get("WRF4CIR_CACHE"),
            "runs": [_new_run(study, 0, samples=None, repeat_offset=0)],
        }
        write_meta(study_dir, meta)
        Ledger(study_dir / LEDGER_FILE).set_meta("study", {"name": name})
        study = parse_spec(spec_data, check_local=False)
        if address is None:  # on a cluster, trials prepare what they need themselves
            prewarm(study)
        init_ray(address, ship_code, verbose)
        run = meta["runs"][-1]
        _fit(_tuner(study, study_dir, meta, run, verbose, min_free_gb, callbacks), study_dir,
             meta, run)
    return study_dir


def _new_run(study: Study, index: int, samples: int | None, repeat_offset: int
             ) -> dict[str, Any]:
    run: dict[str, Any] = {"id": f"run-{index:03d}", "started": _now(), "status": "created"}
    if study.spec.search:
        run["samples_per_cell"] = samples or study.spec.search.num_samples
    else:
        run["repeat_offset"] = repeat_offset
        run["repeats"] = samples or study.spec.repeat
    return run


def resume_study(study_dir: str | Path, address: str | None = None, ship_code: bool = True,
                 verbose: int = 0, min_free_gb: float = MIN_FREE_GB) -> Path:
    """Continue a study: unfinished trials from their checkpoints, errored ones retried."""
    from ray import tune

    from study.callbacks import StorageGuard

    study_dir = Path(study_dir).expanduser().resolve()
    study, meta = load_study(study_dir)
    check_storage(study_dir, meta["ray_storage"], min_free_gb)
    with driver_lock(study_dir):
        # a diverged trial is errored for us but finished for Tune: re-running it would
        # diverge again, so only Tune's own errors and unfinished trials need a resume
        errored_runs = {t["run"] for t in Ledger(study_dir / LEDGER_FILE).trials()
                        if t["status"] in ("running", "pending") or t["ray_status"] == "ERROR"}
        todo = [r for r in meta["runs"] if r["status"] != "finished" or r["id"] in errored_runs]
        if not todo:
            log.info("nothing to resume: every trial of %s finished", study.name)
            return study_dir
        if address is None:
            prewarm(study)
        init_ray(address, ship_code, verbose)
        for run in todo:
            path = f"{meta['ray_storage'].rstrip('/')}/{run['id']}"
            if not tune.Tuner.can_restore(path):
                # the driver died before Tune saved anything: start the run afresh
                log.warning("%s has no restorable Tune state; starting it again", run["id"])
                Ledger(study_dir / LEDGER_FILE).forget_run(run["id"])
                _fit(_tuner(study, study_dir, meta, run, verbose, min_free_gb), study_dir,
                     meta, run)
                continue
            # the restored run brings back its own StorageGuard: give it this limit
            StorageGuard.restored_min_free_gb = min_free_gb
            tuner = tune.Tuner.restore(path, trainable=_trainable(study_dir, meta),
                                       resume_unfinished=True, resume_errored=True)
            _fit(tuner, study_dir, meta, run)
    return study_dir


def extend_study(study_dir: str | Path, samples: int, address: str | None = None,
                 ship_code: bool = True, verbose: int = 0,
                 min_free_gb: float = MIN_FREE_GB) -> Path:
    """Add trials: ``samples`` more Optuna trials per cell (searches) or more seeds (grids).

    Tune cannot grow a finished experiment, so this starts a new run in the same study;
    Optuna continues each cell's history from the shared storage.
    """
    if samples < 1:
        raise SpecError(f"--samples: expected >= 1, got {samples}")
    study_dir = Path(study_dir).expanduser().resolve()
    study, meta = load_study(study_dir)
    check_storage(study_dir, meta["ray_storage"], min_free_gb)
    with driver_lock(study_dir):
        unfinished = [r["id"] for r in meta["runs"] if r["status"] != "finished"]
        if unfinished:
            raise StudyError(f"{study_dir}: {unfinished[0]} did not finish; run "
                             f"`wrf4cir-study resume {study_dir}` first")
        offset = sum(r.get("repeats", 0) for r in meta["runs"])
        run = _new_run(study, len(meta["runs"]), samples, offset)
        meta["runs"].append(run)
        write_meta(study_dir, meta)
        if address is None:
            prewarm(study)
        init_ray(address, ship_code, verbose)
        _fit(_tuner(study, study_dir, meta, run, verbose, min_free_gb), study_dir, meta, run)
    return study_dir

