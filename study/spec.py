"""The study spec: one YAML file describing a sweep, validated before anything starts.

```yaml
name: smoke
base: {...}                    # a wrf4cir training config applied to every trial
grid:                          # axes over config keys (or whole sections, merged into base)
  model: [{name: wrf-tiny-vit}, {name: wrf-tiny-rn}]
  perturb.radius: [0, 1.0e-3, 1.0e-2]
repeat: 2                      # seeds per grid cell (seed = base seed + repeat index)
search:                        # optional: Optuna, one study per grid cell
  sampler: tpe                 # tpe | random | grid | nsga2
  num_samples: 20              # trials per grid cell
  objectives: [{metric: val/headline, mode: max}, {metric: gap/headline, mode: min}]
  space:
    optim.lr: {loguniform: [1.0e-5, 1.0e-3]}
    perturb.radius: {uniform: [0, 1.0e-2]}
    perturb.kind: {choice: [wrf, sam]}
scheduler: {type: asha, grace_period: 1, reduction_factor: 3}
resources: {cpu: 1, gpu: 0.25}
max_concurrent: 4
failure: {max_failures: 2}
checkpoint: {every: 1, keep: 2}
```

Every problem is reported as one :class:`SpecError` line naming the key.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wrf4cir.config import Config, ConfigError, config_keys, read_yaml, set_by_path

SECTIONS = ("model", "data", "perturb", "optim", "eval", "run")
# split/[part/]metric, e.g. val/headline, gap/R@10, val/dress/R@50 (FashionIQ categories)
METRIC_RE = re.compile(r"^((val|probe|gap)/([A-Za-z0-9_-]+/)?(R@\d+|Rsubset@\d+|headline|loss)"
                       r"|train/loss|sharpness/mean)$")
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class SpecError(ValueError):
    """A study spec that cannot run; the message is one line naming the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class Objective(_Strict):
    metric: str
    mode: Literal["max", "min"]

    @model_validator(mode="after")
    def _known_metric(self) -> Objective:
        if not METRIC_RE.match(self.metric):
            raise ValueError(f"unknown metric {self.metric!r} (e.g. val/headline, "
                             "gap/headline, val/R@10, gap/loss)")
        return self


class Distribution(_Strict):
    """Exactly one of: uniform [lo, hi], loguniform [lo, hi], int [lo, hi], choice [...]."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    # the spec's word is "int"; the attribute is int_ so the builtin stays usable here
    int_: tuple[int, int] | None = Field(None, alias="int")
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [k for k in ("uniform", "loguniform", "int", "choice")
                 if self.values(k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of uniform, loguniform, int, choice")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice: needs at least one value")
        else:
            lo, hi = self.values(kind)
            if not lo < hi:
                raise ValueError(f"{kind}: low must be < high, got [{lo}, {hi}]")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform: low must be > 0, got {lo}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("uniform", "loguniform", "int", "choice")
                    if self.values(k) is not None)

    def values(self, kind: str | None = None) -> Any:
        """The bounds (or choices) of ``kind`` (default: this distribution's kind)."""
        kind = kind or self.kind
        return getattr(self, "int_" if kind == "int" else kind)


class SearchSpec(_Strict):
    sampler: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    num_samples: Annotated[int, Field(ge=1)]  # trials per grid cell
    objectives: Annotated[list[Objective], Field(min_length=1)]
    space: Annotated[dict[str, Distribution], Field(min_length=1)]
    seed: int = 0

    @model_validator(mode="after")
    def _grid_needs_choices(self) -> SearchSpec:
        if self.sampler == "grid":
            bad = [k for k, d in self.space.items() if d.kind != "choice"]
            if bad:
                raise ValueError(f"sampler grid needs 'choice' distributions; {bad[0]} is "
                                 f"{self.space[bad[0]].kind}")
        return self


class SchedulerSpec(_Strict):
    type: Literal["asha"] = "asha"  # noqa: A003
    grace_period: Annotated[int, Field(ge=1)] = 1  # epochs before a trial can be stopped
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0
    # the metric ASHA ranks by, with its direction (give both, or neither: then the first
    # search objective, else val/headline max)
    metric: str | None = None
    mode: Literal["max", "min"] | None = None

    @model_validator(mode="after")
    def _metric_with_mode(self) -> SchedulerSpec:
        if (self.metric is None) != (self.mode is None):
            raise ValueError("give metric and mode together (e.g. metric: val/loss, mode: min)")
        return self


class ResourcesSpec(_Strict):
    cpu: Annotated[float, Field(gt=0)] = 1.0
    gpu: Annotated[float, Field(ge=0)] = 0.0  # fractions allowed (bookkeeping only)


class FailureSpec(_Strict):
    max_failures: Annotated[int, Field(ge=0)] = 2  # retries per trial (from its checkpoint)


class CheckpointSpec(_Strict):
    every: Annotated[int, Field(ge=1)] = 1  # epochs between checkpoints
    keep: Annotated[int, Field(ge=1)] = 2  # most recent checkpoints kept per trial
    # keep the checkpoints of trials that ended (completed or stopped early): their final
    # models. false deletes them at the end of each such trial; errored and unfinished
    # trials keep theirs, since resume needs them
    keep_finished: bool = True


class StudySpec(_Strict):
    name: Annotated[str, Field(pattern=NAME_RE)]
    description: str = ""
    base: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    repeat: Annotated[int, Field(ge=1)] = 1
    search: SearchSpec | None = None
    scheduler: SchedulerSpec | None = None
    resources: ResourcesSpec = ResourcesSpec()
    max_concurrent: Annotated[int, Field(ge=1)] | None = None
    failure: FailureSpec = FailureSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()


@dataclass(frozen=True)
class Cell:
    """One grid cell: a combination of axis values."""

    id: str  # short stable hash of the values
    label: str  # human-readable "model=wrf-tiny-vit perturb.radius=0.001"
    values: dict[str, Any]


@dataclass(frozen=True)
class Study:
    """A validated spec with its grid expanded."""

    spec: StudySpec
    cells: tuple[Cell, ...]
    source: Path | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def config_dict(self, cell: Cell, repeat: int = 0, params: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
        """The training config (nested dict) of one trial: base + cell + search params."""
        data = copy.deepcopy(self.spec.base)
        for key, value in cell.values.items():
            _apply(data, key, value)
        for key, value in (params or {}).items():
            _apply(data, key, value)
        data["seed"] = int(data.get("seed", 0)) + repeat
        return data

    def config(self, cell: Cell, repeat: int = 0, params: Mapping[str, Any] | None = None
               ) -> Config:
        return Config.from_dict(self.config_dict(cell, repeat, params))

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise KeyError(f"no grid cell {cell_id!r} in study {self.name!r}")

    @property
    def objectives(self) -> list[Objective]:
        if self.spec.search:
            return self.spec.search.objectives
        return [Objective(metric="val/headline", mode="max")]

    @property
    def trials_planned(self) -> int:
        per_cell = self.spec.search.num_samples if self.spec.search else self.spec.repeat
        return per_cell * len(self.cells)


def _apply(data: dict[str, Any], key: str, value: Any) -> None:
    # a whole section given as a mapping is merged into the base's section
    if key in SECTIONS and isinstance(value, Mapping):
        section = data.setdefault(key, {})
        if not isinstance(section, dict):
            raise SpecError(f"base.{key}: must be a mapping")
        for k, v in value.items():
            set_by_path(section, k, copy.deepcopy(v))
    else:
        set_by_path(data, key, copy.deepcopy(value))


def _label_value(value: Any) -> str:
    if isinstance(value, Mapping):
        for head in ("name", "kind"):  # model/data sections by name, perturb by kind
            if head in value:
                rest = {k: v for k, v in value.items() if k != head}
                return str(value[head]) + (f"({_short(rest)})" if rest else "")
        return _short(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _short(value: Any) -> str:
    return ",".join(f"{k}={_label_value(v)}" for k, v in value.items()) \
        if isinstance(value, Mapping) else str(value)


def expand_grid(grid: Mapping[str, list[Any]]) -> tuple[Cell, ...]:
    """Every combination of the axes, in the order the spec lists them."""
    if not grid:
        return (Cell(id="all", label="(no grid)", values={}),)
    axes = list(grid)
    cells = []
    for combo in itertools.product(*(grid[a] for a in axes)):
        values = dict(zip(axes, combo, strict=True))
        blob = json.dumps(values, sort_keys=True, default=str)
        cid = hashlib.sha256(blob.encode()).hexdigest()[:8]
        label = " ".join(f"{a}={_label_value(v)}" for a, v in values.items())
        cells.append(Cell(id=cid, label=label, values=values))
    return tuple(cells)


def _pydantic_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ""
    for part in err["loc"]:
        loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key missing"
    return f"{loc}: {msg}" if loc else msg


def parse_spec(data: Mapping[str, Any], source: Path | None = None,
               check_local: bool = True) -> Study:
    """Validate a spec mapping completely; raises :class:`SpecError` (one line).

    ``check_local`` also checks what must exist on this machine (models, data roots,
    checkpoint files, the device); a driver joining a cluster skips it, since the
    workers are where those must exist (each trial checks them there).
    """
    where = f"{source}: " if source else ""
    try:
        spec = StudySpec.model_validate(dict(data))
    except ValidationError as exc:
        raise SpecError(where + _pydantic_message(exc)) from None

    known = set(config_keys())
    for axis, values in spec.grid.items():
        if axis not in known and axis not in SECTIONS:
            raise SpecError(f"{where}grid.{axis}: not a config key")
        if not values:
            raise SpecError(f"{where}grid.{axis}: empty axis (give at least one value)")
        if axis in SECTIONS and not all(isinstance(v, Mapping) for v in values):
            raise SpecError(f"{where}grid.{axis}: values of a section axis must be mappings")
    if spec.search:
        for key in spec.search.space:
            if key not in known:
                raise SpecError(f"{where}search.space.{key}: not a config key")
            if key in spec.grid:
                raise SpecError(f"{where}search.space.{key}: also a grid axis")
        if spec.repeat > 1:
            raise SpecError(f"{where}repeat: with search, each Optuna trial is one fit; "
                            "use repeat: 1 (or a grid axis over seed)")
    if spec.scheduler and spec.scheduler.metric and not METRIC_RE.match(spec.scheduler.metric):
        raise SpecError(f"{where}scheduler.metric: unknown metric {spec.scheduler.metric!r}")

    study = Study(spec=spec, cells=expand_grid(spec.grid), source=source)
    # every trial config must be valid: check each cell with a representative of the space
    probe = _space_probe(spec.search)
    for cell in study.cells:
        try:
            study.config(cell, 0, probe)
        except ConfigError as exc:
            prefix = f"grid cell [{cell.label}]: " if spec.grid else "base."
            raise SpecError(f"{where}{prefix}{exc}") from None
    if check_local:
        _preflight(study, where)
    if spec.search:  # each distribution's ends must be valid values too
        for key, dist in spec.search.space.items():
            values = dist.choice if dist.kind == "choice" else list(dist.values())
            for value in values:
                try:
                    study.config(study.cells[0], 0, {**probe, key: value})
                except ConfigError as exc:
                    raise SpecError(f"{where}search.space.{key}: {exc}") from None
    return study


def _preflight(study: Study, where: str) -> None:
    """Names and paths every cell uses: models, datasets, checkpoint files, data roots."""
    from wrf4cir.data import DataError
    from wrf4cir.models import ModelError
    from wrf4cir.trainer import preflight

    seen = set()
    for cell in study.cells:
        cfg = study.config(cell, 0, _space_probe(study.spec.search))
        key = (cfg.model.name, cfg.model.pretrained, cfg.data.name, cfg.data.root,
               cfg.run.device)
        if key in seen:
            continue
        seen.add(key)
        try:
            preflight(cfg)
        except (ModelError, DataError, ConfigError) as exc:
            prefix = f"grid cell [{cell.label}]: " if study.spec.grid else "base."
            raise SpecError(f"{where}{prefix}{exc}") from None


def _space_probe(search: SearchSpec | None) -> dict[str, Any]:
    if search is None:
        return {}
    out = {}
    for key, dist in search.space.items():
        if dist.kind == "choice":
            out[key] = dist.choice[0]
        elif dist.kind == "loguniform":
            lo, hi = dist.loguniform
            out[key] = math.sqrt(lo * hi)
        elif dist.kind == "int":
            out[key] = dist.int_[0]
        else:
            lo, hi = dist.uniform
            out[key] = (lo + hi) / 2
    return out


def load_spec(path: str | Path, check_local: bool = True) -> Study:
    """Read and validate a spec file (``yaml.safe_load``)."""
    path = Path(path)
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        raise SpecError(str(exc)) from None
    return parse_spec(data, source=path, check_local=check_local)
