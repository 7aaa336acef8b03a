"""Defaults the command line shows and checks before anything heavy (torch, Ray) loads."""

from __future__ import annotations

from collections.abc import Sequence

MIN_FREE_GB = 1.0  # room a study must have to start, and to keep going (--min-free-gb)

# the fault drill's scenarios (study/drill.py), in the order they run
SCENARIOS = ("node", "driver", "trial", "checkpoint")


def scenario_error(scenarios: Sequence[str]) -> str | None:
    """Why ``scenarios`` is not a valid drill selection, or None if it is."""
    bad = [s for s in scenarios if s not in SCENARIOS] or ([] if scenarios else [""])
    if bad:
        return f"--scenarios: unknown scenario {bad[0]!r} (choose from {', '.join(SCENARIOS)})"
    return None


def drill_storage_error(storage: str) -> str | None:
    """Why ``storage`` cannot hold the drill's studies (a URI), or None."""
    if "://" in storage:
        return (f"--storage {storage}: the drill needs a folder (on a cluster, one every node "
                "mounts), not a URI")
    return None
