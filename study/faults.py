"""Fault injection for drills and tests: kill a trial's process, its node, or its checkpoint.

:class:`FaultInjector` is a driver-side Tune callback. It watches the trials' reports
and, at the chosen epoch, sends a SIGKILL through a zero-CPU Ray task pinned to the
victim's node (to the trial's process, or to the node's raylet, which takes the node and
its workers down), so the same mechanism works on a laptop and on a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from ray import tune

log = logging.getLogger(__name__)


def run_on_node(fn: Callable[..., Any], node_id: str, *args: Any) -> Any:
    """Start ``fn(*args)`` as a zero-CPU, never-retried Ray task on node ``node_id``;
    returns its object ref."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    pinned = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    return task.options(scheduling_strategy=pinned).remote(*args)


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:  # no /proc (macOS)
        out = subprocess.run(["ps", "-o", "comm=", "-p", str(pid)], capture_output=True,
                             text=True)
        return Path(out.stdout.strip()).name


def _sigkill(pid: int) -> str:
    os.kill(pid, signal.SIGKILL)
    return f"SIGKILL sent to process {pid}"


def _sigkill_raylet() -> str:
    # Ray workers are the raylet's children: the parent of this task is its node's raylet
    raylet = os.getppid()
    name = _process_name(raylet)
    if not name.endswith("raylet"):
        raise RuntimeError(f"the parent of a Ray worker is {name!r} (pid {raylet}), not the "
                           "raylet; this cluster starts its workers differently")
    os.kill(raylet, signal.SIGKILL)
    return f"SIGKILL sent to raylet {raylet}"


def kill_process(node_id: str, pid: int) -> None:
    """SIGKILL process ``pid`` on Ray node ``node_id`` (through a task pinned there)."""
    ray.get(run_on_node(_sigkill, node_id, pid), timeout=60)


def kill_node(node_id: str) -> None:
    """SIGKILL the raylet of Ray node ``node_id``: the node and its workers die."""
    ref = run_on_node(_sigkill_raylet, node_id)
    # the task's own process dies with its raylet; an error here is expected
    with contextlib.suppress(ray.exceptions.RayError):
        ray.get(ref, timeout=30)
    # wait until the cluster has noticed, so that the restart does not land on it
    end = time.time() + 120
    while time.time() < end:
        if not any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
            return
        time.sleep(0.5)
    raise RuntimeError(f"node {node_id} still alive two minutes after its raylet was killed")


def truncate_checkpoint(checkpoint: tune.Checkpoint) -> str:
    """Cut a checkpoint's ``checkpoint.pt`` in storage to half its size; returns its path."""
    from wrf4cir.checkpoint import FILENAME

    fs, path = checkpoint.filesystem, f"{checkpoint.path.rstrip('/')}/{FILENAME}"
    with fs.open_input_file(path) as fh:
        data = fh.read()
    with fs.open_output_stream(path) as fh:
        fh.write(data[: len(data) // 2])
    return path


def protected_nodes() -> set[str]:
    """Nodes the drill must never kill: the head node and the node of this driver."""
    heads = {n["NodeID"] for n in ray.nodes()
             if "node:__internal_head__" in n.get("Resources", {})}
    return heads | {ray.get_runtime_context().get_node_id()}


class FaultInjector(tune.Callback):
    """Injects a fault into one trial from the driver.

    Kinds: ``"process"`` kills the trial's process, ``"node"`` its node, ``"checkpoint"``
    truncates the trial's latest checkpoint in storage (a write cut off) and then kills
    its process, so that the restart finds it broken.

    The victim is the first trial that reports epoch ``at_epoch`` on a node not in
    ``protect``. Each new attempt of the victim (a new pid) is struck until ``times``
    faults were injected. ``injected`` lists what was done, for the checks.
    """

    def __init__(self, kind: str, at_epoch: int, times: int = 1,
                 protect: Sequence[str] = ()) -> None:
        if kind not in ("process", "node", "checkpoint"):
            raise ValueError(f"unknown fault kind {kind!r}")
        self.kind, self.at_epoch, self.times = kind, at_epoch, times
        self.protect = list(protect)
        self.injected: list[dict[str, Any]] = []
        self.errors: list[str] = []  # faults that could not be injected, and why
        self.victim: str | None = None
        self._pending: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # saved with the Tuner (tuner.pkl), which `resume` loads: plain data only
        return {"kind": self.kind, "at_epoch": self.at_epoch, "protect": self.protect}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a resumed drill study must not strike again, least of all a cluster's node
        self.__init__(state["kind"], state["at_epoch"], times=0,
                      protect=state.get("protect", ()))

    def _forget(self, trial: Any) -> None:
        # the victim ended or failed before its checkpoint was registered: choose again
        if self._pending and self._pending["trial"] == trial.trial_id:
            self._pending = None

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        self._forget(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        self._forget(trial)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self._forget(trial)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        if (len(self.injected) + len(self.errors) >= self.times or self._pending
                or self.victim not in (None, trial.trial_id)):
            return
        epoch, node, pid = result.get("epoch"), result.get("node_id"), result.get("pid")
        if epoch is None or epoch < self.at_epoch or not node or node in self.protect:
            return
        if any((f["node"], f["pid"]) == (node, pid) for f in self.injected):
            return  # this attempt was already struck; wait for its restart
        with_checkpoint = bool(result.get("checkpoint_dir_name"))
        if self.kind == "checkpoint" and not with_checkpoint:
            return
        self.victim = trial.trial_id
        self._pending = {"trial": trial.trial_id, "epoch": int(epoch), "node": node,
                         "pid": int(pid), "ready": not with_checkpoint}

    def on_checkpoint(self, iteration: int, trials: list[Any], trial: Any,
                      checkpoint: tune.Checkpoint, **info: Any) -> None:
        # Tune registers the checkpoint that came with the victim's result right after
        # this call (and skips that if a callback raises): strike at the end of the step,
        # so that the restart can use it
        if self._pending and self._pending["trial"] == trial.trial_id:
            self._pending.update(ready=True, checkpoint=checkpoint)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not (self._pending and self._pending["ready"]):
            return
        fault, self._pending = self._pending, None
        checkpoint = fault.pop("checkpoint", None)
        del fault["ready"]
        try:
            if self.kind == "checkpoint":
                fault["truncated"] = truncate_checkpoint(checkpoint)
            if self.kind == "node":
                kill_node(fault["node"])
            else:
                kill_process(fault["node"], fault["pid"])
        except Exception as exc:  # noqa: BLE001 - the drill reports it; the study goes on
            self.errors.append(f"could not kill the {self.kind} of trial {fault['trial']}: "
                               f"{type(exc).__name__}: {exc}")
            log.error(self.errors[-1])
            return
        self.injected.append({**fault, "time": time.time()})
        log.warning("fault drill: killed the %s of trial %s after its epoch %d",
                    {"node": "node", "process": "process", "checkpoint": "process (its latest "
                     "checkpoint truncated)"}[self.kind], fault["trial"], fault["epoch"])
