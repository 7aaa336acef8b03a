"""The fault drill: break a Ray cluster on purpose and check that no result is lost.

``wrf4cir-study fault-drill`` runs small studies of tiny synthetic trials and
injects one kind of failure into each, then checks what a long sweep relies on:

``node``    a worker node dies mid-study (its raylet is killed with SIGKILL). Its trials
            restart on the surviving nodes from their last checkpoint, not from epoch 0;
            the study completes; every (trial, epoch) is recorded exactly once.
``driver``  the driver is killed with SIGKILL, then ``wrf4cir-study resume``: every trial
            finishes exactly once and the Optuna history has one finished entry per trial
            with the values the trials reported.
``trial``   one trial's worker process is killed with SIGKILL at every attempt: it is
            retried ``failure.max_failures`` times from its checkpoint, then recorded as
            errored with the reason; the other trials are unaffected.
``checkpoint`` a trial's latest checkpoint is truncated in storage (a write cut off) and
            its process killed: the restart detects the broken checkpoint, resumes from
            the one before, and says so in the trial's ``notes``.

Without ``--address`` the drill starts its own cluster on this machine (a head node
without CPUs and two one-CPU worker nodes) and removes it afterwards. With ``--address``
it runs on the given cluster: the ``node`` scenario then really takes down one worker
node's raylet (never the head's, never the driver's), which the operator or the
autoscaler has to bring back. Studies are written under ``--storage``, a folder that on
a real cluster every node must mount (checked first, with a task on every node).

Faults are injected from the driver by :class:`study.faults.FaultInjector`, the same
mechanism on a laptop and on a cluster.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.defaults import SCENARIOS, drill_storage_error, scenario_error

if TYPE_CHECKING:
    import pandas as pd

    from study.faults import FaultInjector

log = logging.getLogger(__name__)

EPOCHS = 4  # per drill trial: long enough to kill one midway, short enough for minutes
AT_EPOCH = 2  # a fault strikes once the victim has reported this epoch


def drill_spec(name: str, max_failures: int, search: bool = False) -> dict[str, Any]:
    """A study of two tiny synthetic trials (random init, a few seconds per epoch)."""
    spec: dict[str, Any] = {
        "name": name,
        "description": "wrf4cir-study fault drill",
        "base": {
            "model": {"name": "wrf-tiny-rn", "pretrained": None},
            "data": {"name": "synthetic-shapes",
                     "recipe": {"train_triplets": 64, "val_triplets": 24}},
            "optim": {"epochs": EPOCHS, "batch_size": 8, "lr": 1e-3},
            "eval": {"batch_size": 64},
        },
        "resources": {"cpu": 1},
        "failure": {"max_failures": max_failures},
        # finished trials' checkpoints are of no use to a drill (and ~100 MB each)
        "checkpoint": {"every": 1, "keep": 2, "keep_finished": False},
    }
    if search:
        spec["search"] = {"sampler": "random", "num_samples": 2, "seed": 0,
                          "objectives": [{"metric": "val/headline", "mode": "max"}],
                          "space": {"perturb.radius": {"uniform": [0.0, 1e-2]}}}
    else:
        spec["grid"] = {"perturb.radius": [0.0, 1e-2]}
    return spec


# ---------------------------------------------------------------------------------------
# checks


@dataclass
class Outcome:
    """What one scenario did and whether every check held."""

    scenario: str
    study_dir: Path | None = None
    seconds: float = 0.0
    checks: list[tuple[str, bool]] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(ok for _, ok in self.checks)

    def check(self, what: str, ok: bool) -> bool:
        self.checks.append((what, bool(ok)))
        return bool(ok)

    def lines(self) -> list[str]:
        head = f"{self.scenario:<10} {'PASS' if self.passed else 'FAIL'}  {self.seconds:.0f}s"
        out = [head + (f"  {self.study_dir}" if self.study_dir else "")]
        out += [f"    [{'x' if ok else ' '}] {what}" for what, ok in self.checks]
        if self.error:
            out.append(f"    error: {self.error}")
        return out


def _tables(study_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    import pandas as pd

    from study.export import export_study

    export_study(study_dir)
    return (pd.read_parquet(study_dir / "trials.parquet"),
            pd.read_parquet(study_dir / "epochs.parquet"))


def _check_epochs(out: Outcome, trials: pd.DataFrame, epochs: pd.DataFrame,
                  complete: pd.Series) -> None:
    out.check("2 trials in the export, none duplicated or missing",
              len(trials) == 2 and trials["trial_id"].is_unique)
    out.check("the export has one row per (trial, epoch)",
              not epochs.duplicated(["trial_id", "epoch"]).any())
    done = trials[complete]
    ok = all(sorted(epochs.loc[epochs["trial_id"] == t, "epoch"]) == list(range(1, EPOCHS + 1))
             for t in done["trial_id"])
    out.check(f"completed trials have epochs 1..{EPOCHS}, no gap", ok and len(done) > 0)


def _victim(trials: pd.DataFrame, epochs: pd.DataFrame, ray_id: str
            ) -> tuple[pd.Series, pd.DataFrame]:
    """Which rows of ``trials`` are Tune trial ``ray_id``, and that trial's epoch rows."""
    is_victim = trials["trial_id"].str.endswith("/" + ray_id)
    return is_victim, epochs[epochs["trial_id"].isin(trials.loc[is_victim, "trial_id"])]


def check_node(out: Outcome, injector: FaultInjector) -> None:
    out.check("a worker node running a trial was killed", len(injector.injected) == 1)
    trials, epochs = _tables(out.study_dir)
    out.check("every trial completed", (trials["status"] == "completed").all())
    _check_epochs(out, trials, epochs, trials["status"] == "completed")
    if injector.injected:
        fault = injector.injected[0]
        is_victim, rows = _victim(trials, epochs, fault["trial"])
        resumed = rows["trial/resumed_from"].max()  # NaN if it has none: every check fails
        out.check(f"the victim restarted from its checkpoint (epoch {resumed:g}), not from 0",
                  resumed >= fault["epoch"])
        row = trials[is_victim]
        out.check("the victim's failure was counted", len(row) == 1
                  and int(row["failures"].iloc[0]) >= 1)


def check_trial(out: Outcome, injector: FaultInjector, max_failures: int) -> None:
    out.check(f"the victim's process was killed {max_failures + 1} times (each attempt)",
              len(injector.injected) == max_failures + 1)
    trials, epochs = _tables(out.study_dir)
    if not injector.injected:
        return
    is_victim, rows = _victim(trials, epochs, injector.injected[0]["trial"])
    victim = trials[is_victim]
    out.check("the victim is recorded as errored",
              len(victim) == 1 and victim["status"].iloc[0] == "errored")
    reason = str(victim["error"].iloc[0]) if len(victim) else ""
    out.check(f"with the reason ({reason[:90]})", "died" in reason.lower()
              or "killed" in reason.lower())
    out.check("it was retried from its checkpoint, not from epoch 0",
              rows["trial/resumed_from"].max() >= AT_EPOCH)
    others = trials[~is_victim]
    out.check("the other trials completed", len(others) > 0
              and (others["status"] == "completed").all())
    _check_epochs(out, trials, epochs, ~is_victim)


def check_checkpoint(out: Outcome, injector: FaultInjector) -> None:
    out.check("the victim's latest checkpoint was truncated and its process killed",
              len(injector.injected) == 1 and bool(injector.injected[0].get("truncated")))
    trials, epochs = _tables(out.study_dir)
    out.check("every trial completed", (trials["status"] == "completed").all())
    _check_epochs(out, trials, epochs, trials["status"] == "completed")
    if not injector.injected:
        return
    fault = injector.injected[0]
    is_victim, rows = _victim(trials, epochs, fault["trial"])
    resumed = rows["trial/resumed_from"].max()
    out.check(f"the victim resumed from the checkpoint before it (epoch {resumed:g})",
              0 < resumed < fault["epoch"])
    row = trials[is_victim]
    notes = str(row["notes"].iloc[0]) if len(row) else ""
    out.check("and says so in its notes", "unreadable: checkpoint_" in notes
              and "resumed from the older" in notes)


def check_driver(out: Outcome) -> None:
    import optuna

    trials, epochs = _tables(out.study_dir)
    out.check("every trial completed", (trials["status"] == "completed").all())
    _check_epochs(out, trials, epochs, trials["status"] == "completed")
    restarted = epochs[epochs["trial/resumed_from"] > 0]
    out.check("an interrupted trial continued from its checkpoint, not from epoch 0",
              len(restarted) > 0
              and (restarted["epoch"] > restarted["trial/resumed_from"]).all())
    storage = f"sqlite:///{out.study_dir}/optuna.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    history = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    complete = {t.user_attrs.get("ray_trial_id"): t for t in history
                if t.state.name == "COMPLETE"}
    out.check("Optuna: one finished entry per trial",
              len(complete) == len(trials) == sum(t.state.name == "COMPLETE" for t in history))
    same = all(ray_id in complete and complete[ray_id].value == row["last.val/headline"]
               for ray_id, row in zip(trials["trial_id"].str.split("/").str[1],
                                      trials.to_dict("records"), strict=True))
    out.check("Optuna's values are the values the trials reported", same)
    out.check("the export says so (optuna_state COMPLETE)",
              (trials["optuna_state"] == "COMPLETE").all())
    out.check("Optuna: no entry left running", all(t.state.name != "RUNNING" for t in history))


# ---------------------------------------------------------------------------------------
# scenarios


def _in_process(out: Outcome, root: Path, address: str, ship_code: bool, max_failures: int,
                injector: FaultInjector) -> None:
    """Run the scenario's study in this driver with ``injector``; note what failed to inject."""
    from study.runner import run_study
    from study.spec import parse_spec

    spec = drill_spec(f"drill-{out.scenario}", max_failures)
    out.study_dir = run_study(parse_spec(spec, check_local=False), storage=root,
                              address=address, ship_code=ship_code, callbacks=[injector])
    if injector.errors:
        out.error = "; ".join(injector.errors)


def scenario_node(root: Path, address: str, ship_code: bool) -> Outcome:
    import ray

    from study.faults import FaultInjector, protected_nodes

    out = Outcome("node")
    protect = protected_nodes()
    cpus = {n["NodeID"]: n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes()
            if n["Alive"]}
    victims = [node for node, cpu in cpus.items() if node not in protect and cpu >= 1]
    spare = [node for node, cpu in cpus.items() if cpu >= 1]
    if not victims or len(spare) < 2:
        out.error = ("needs a worker node with a CPU that may be killed (not the head's, not "
                     "the driver's) and another node with a CPU to take over its trials; "
                     f"this cluster has {len(victims)} and {len(spare) - len(victims)}")
        return out
    injector = FaultInjector("node", AT_EPOCH, protect=sorted(protect))
    _in_process(out, root, address, ship_code, 2, injector)
    if not injector.injected and not injector.errors:
        out.error = (f"no drill trial reached epoch {AT_EPOCH} on a worker node that may be "
                     "killed (Ray placed them on the head or the driver's node)")
    check_node(out, injector)
    return out


def scenario_trial(root: Path, address: str, ship_code: bool) -> Outcome:
    max_failures = 1
    out = Outcome("trial")
    # killing a trial's process harms nothing else, on the head node too
    from study.faults import FaultInjector

    injector = FaultInjector("process", AT_EPOCH, times=max_failures + 1)
    _in_process(out, root, address, ship_code, max_failures, injector)
    check_trial(out, injector, max_failures)
    return out


def scenario_checkpoint(root: Path, address: str, ship_code: bool) -> Outcome:
    out = Outcome("checkpoint")
    from study.faults import FaultInjector

    injector = FaultInjector("checkpoint", AT_EPOCH)
    _in_process(out, root, address, ship_code, 2, injector)
    check_checkpoint(out, injector)
    return out


def _midway(ledger_path: Path) -> bool:
    from study.ledger import Ledger

    if not ledger_path.is_file():
        return False
    try:
        ledger = Ledger(ledger_path, readonly=True)
        running = {t["trial_key"] for t in ledger.trials() if t["status"] == "running"}
        last: dict[str, int] = {}
        for row in ledger.epochs():
            last[row["trial_key"]] = row["epoch"]
    except Exception:  # noqa: BLE001 - the driver may be creating the tables right now
        return False
    return any(AT_EPOCH <= last.get(k, 0) < EPOCHS for k in running)


def _state_saved_after(run_dir: Path, since: float) -> bool:
    return any(p.stat().st_mtime > since for p in run_dir.glob("experiment_state-*.json"))


def scenario_driver(root: Path, address: str | None, ship_code: bool,
                    timeout: float = 300) -> Outcome:
    """SIGKILL a `wrf4cir-study run` driver midway, then `resume` (``address`` None: the
    drivers start their own local Ray instance)."""
    out = Outcome("driver")
    name = "drill-driver"
    out.study_dir = root / name
    import yaml

    spec_path = root / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(drill_spec(name, 2, search=True), sort_keys=False))
    cmd = [sys.executable, "-m", "study.cli"]
    flags = (["--address", address] if address else []) + ([] if ship_code
                                                           else ["--no-ship-code"])
    # Tune saves its experiment state (what resume restores) at most this often
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    log_path = root / f"{name}.driver.log"
    midway = saved = False
    with open(log_path, "wb") as log_file:
        driver = subprocess.Popen([*cmd, "run", str(spec_path), "--storage", str(root),
                                   *flags], env=env, stdout=log_file, stderr=log_file)
        try:
            end = time.time() + timeout
            while time.time() < end and driver.poll() is None and not midway:
                midway = _midway(out.study_dir / "ledger.sqlite")
                time.sleep(0.3)
            # kill it once Tune's saved state knows the checkpoints behind that progress
            seen = time.time()
            while midway and time.time() < seen + 30 and driver.poll() is None and not saved:
                saved = _state_saved_after(out.study_dir / "tune" / "run-000", seen)
                time.sleep(0.2)
        finally:
            alive = driver.poll() is None
            driver.send_signal(signal.SIGKILL)
            driver.wait()
    if not out.check("the driver was killed with a trial midway", midway and saved and alive):
        out.error = (f"no trial got midway in {timeout:.0f}s" if not midway else
                     f"the driver ended by itself (see {log_path})" if not alive else
                     "Tune did not save its state within 30 s")
        return out
    from study.status import study_status

    out.check("`wrf4cir-study status` reads the crashed study as interrupted",
              "state: interrupted" in study_status(out.study_dir))
    resumed = subprocess.run([*cmd, "resume", str(out.study_dir), *flags], env=env,
                             capture_output=True, text=True, timeout=timeout)
    if not out.check("`wrf4cir-study resume` succeeded", resumed.returncode == 0):
        out.error = (resumed.stderr.strip().splitlines() or ["(no output)"])[-1]
        return out
    check_driver(out)
    return out


_SCENARIO_FUNCS: dict[str, Callable[[Path, str, bool], Outcome]] = {
    "node": scenario_node, "driver": scenario_driver, "trial": scenario_trial,
    "checkpoint": scenario_checkpoint}


@contextmanager
def local_cluster(workers: int = 2) -> Iterator[str]:
    """A head node without CPUs and ``workers`` one-CPU worker nodes on this machine."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(workers):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


def run_drill(address: str | None = None, storage: str | Path = "results/fault-drill",
              scenarios: Sequence[str] = SCENARIOS, ship_code: bool = True,
              report: Callable[[str], None] = print, workers: int = 2) -> list[Outcome]:
    """Run the scenarios (on a cluster of this machine's, with ``workers`` one-CPU worker
    nodes, when ``address`` is None).

    Each scenario is a new study in ``<storage>/<UTC time>/``; ``report`` gets each
    outcome's lines as soon as it is known.
    """
    if error := scenario_error(scenarios) or drill_storage_error(str(storage)):
        raise ValueError(error)
    root = Path(storage).expanduser().resolve() / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True, exist_ok=False)
    if address is None:
        with local_cluster(workers) as local:
            return _drill(local, root, scenarios, ship_code=False, report=report)
    return _drill(address, root, scenarios, ship_code, report)


def _sees(path: str) -> bool:
    return os.path.isfile(path)


def nodes_not_seeing(root: Path) -> list[str]:
    """The alive CPU nodes on which a marker file just written under ``root`` is missing."""
    import ray

    from study.faults import run_on_node

    marker = root / ".drill-shared-storage-probe"
    marker.write_text("visible from every node?\n")
    nodes = [n["NodeID"] for n in ray.nodes()
             if n["Alive"] and n.get("Resources", {}).get("CPU", 0) > 0]
    blind = []
    try:
        refs = [run_on_node(_sees, node, str(marker)) for node in nodes]
        for node, ref in zip(nodes, refs, strict=True):
            try:
                if not ray.get(ref, timeout=120):
                    blind.append(node[:12])
            except (ray.exceptions.RayError, TimeoutError) as exc:  # its answer is the finding
                blind.append(f"{node[:12]}: {type(exc).__name__}")
    finally:
        marker.unlink(missing_ok=True)
    return blind


def _drill(address: str, root: Path, scenarios: Sequence[str], ship_code: bool,
           report: Callable[[str], None]) -> list[Outcome]:
    import ray

    from study.runner import init_ray

    outcomes = []
    init_ray(address, ship_code, verbose=0)
    try:
        blind = nodes_not_seeing(root)
        if blind:
            message = (f"{len(blind)} node(s) cannot see {root} ({', '.join(blind)}): the "
                       "drill's storage must be a folder every node mounts")
            outcomes = [Outcome(name, error=message) for name in scenarios]
            for out in outcomes:
                report(out.lines()[0] + f"\n    error: {message}")
            return outcomes
        for name in scenarios:
            t0 = time.time()
            try:
                out = _SCENARIO_FUNCS[name](root, address, ship_code)
            except Exception as exc:  # noqa: BLE001 - a failed scenario is a finding
                out = Outcome(name, error=f"{type(exc).__name__}: {exc}")
            out.seconds = time.time() - t0
            outcomes.append(out)
            for line in out.lines():
                report(line)
    finally:
        ray.shutdown()
    return outcomes
