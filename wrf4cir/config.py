"""Typed training configuration: dataclasses with a comment per field, loaded from YAML.

The defaults are the embedded offline default: a tiny ViT pre-trained here on synthetic
captions, fine-tuned on ``synthetic-shapes`` with the WRF perturbation.

Loading is strict: an unknown key, a wrong type or an out-of-range value raises one
:class:`ConfigError` naming the key (``optim.lr: expected a number > 0, got -1``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from wrf4cir.perturb import KINDS

PerturbKind = Literal["none", "wrf", "random", "sam", "asam"]
assert get_args(PerturbKind) == KINDS  # one list of kinds: the one in perturb.py
ModuleName = Literal["image", "text", "fusion"]


class ConfigError(ValueError):
    """A bad configuration value; the message starts with the dotted key."""


@dataclass
class ModelConfig:
    # open_clip architecture: any name in open_clip.list_models() (ViT-B-32, RN50, ...),
    # including the project's tiny ones (wrf-tiny-vit, wrf-tiny-rn), or 'local-dir:PATH'
    name: str = "wrf-tiny-vit"
    # weights: an open_clip tag (e.g. 'openai', downloaded by open_clip), a local
    # checkpoint file, 'synthetic' (pre-trained here on synthetic captions and cached;
    # the offline default), or null for random initialisation
    pretrained: str | None = "synthetic"
    # query fusion: 'sum' = normalize(img + txt) (CLIP4Cir stage 1); 'combiner' = CLIP4Cir's
    # Combiner network (stage 2)
    fusion: Literal["sum", "combiner"] = "sum"
    freeze_image: bool = False  # keep the image encoder's weights fixed
    freeze_text: bool = False  # keep the text encoder's weights fixed
    # temperature: 'learnable' (starts at logit_scale_init) or 'fixed'
    logit_scale: Literal["learnable", "fixed"] = "learnable"
    # initial (or fixed) multiplier of the cosine similarities; null: the backbone's own
    logit_scale_init: float | None = None
    combiner_proj_dim: int | None = None  # Combiner projection width p; null: 4 x embed dim
    combiner_hidden_dim: int | None = None  # Combiner hidden width h; null: 8 x embed dim
    combiner_dropout: float = 0.5  # dropout inside the Combiner (CLIP4Cir: 0.5)


@dataclass
class DataConfig:
    # dataset name (wrf4cir.data.list_datasets()): synthetic-shapes, synthetic-scenes, ...
    name: str = "synthetic-shapes"
    # where the dataset lives; null for synthetic data means the cache (generated on demand)
    root: str | None = None
    # keep this many training triplets (seeded subsample): the "few triplets" regime;
    # null keeps all of them
    max_triplets: int | None = None
    subsample_seed: int = 0  # seed of that subsample
    # generator options of synthetic datasets (seed, image_size, train_triplets,
    # val_triplets); null: the registered recipe
    recipe: dict[str, Any] | None = None
    # FashionIQ categories (dress, shirt, toptee) as a name or a list; null: all three,
    # trained jointly and scored per category and averaged
    category: list[str] | str | None = None
    # image preprocessing: 'clip' (open_clip's resize and centre crop) or 'target_pad'
    # (CLIP4Cir: pad to square first when the aspect ratio exceeds target_pad_ratio)
    preprocess: Literal["clip", "target_pad"] = "clip"
    target_pad_ratio: float = 1.25
    validate_images: bool = True  # check every referenced image exists before training
    num_workers: int = 0  # DataLoader worker processes (0: load in the training process)


@dataclass
class PerturbConfig:
    kind: PerturbKind = "wrf"  # none | wrf | random | sam | asam (METHOD.md)
    # gamma for wrf/random (relative to each tensor's norm), rho for sam/asam; 0 = plain
    radius: float = 1e-3
    perturb_every: int = 1  # perturb on every k-th step only (trades regularization for speed)
    # which parts of the model are perturbed
    modules: list[ModuleName] = field(default_factory=lambda: ["image", "text", "fusion"])
    min_ndim: int = 2  # tensors with fewer dims (biases, norm gains) are never perturbed


@dataclass
class OptimConfig:
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"  # the base optimizer
    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 0.05  # decoupled (adamw) or L2 (adam, sgd); not on 1-d tensors
    betas: tuple[float, float] = (0.9, 0.98)  # adam/adamw
    eps: float = 1e-6  # adam/adamw
    momentum: float = 0.9  # sgd
    epochs: int = 10
    batch_size: int = 32  # triplets per step; the other targets in a batch are the negatives
    schedule: Literal["constant", "cosine", "onecycle"] = "cosine"  # per step
    warmup_steps: int = 0  # linear warm-up before 'constant' or 'cosine'
    grad_clip: float | None = None  # max global gradient norm; null: no clipping


@dataclass
class EvalConfig:
    batch_size: int = 128  # images/texts per encoder call during evaluation
    # train-probe size; null: as many queries as the validation split (METHOD.md)
    probe_queries: int | None = None
    probe_seed: int = 0  # seed of the train-probe sample
    every: int = 1  # evaluate every n epochs (the last epoch is always evaluated)
    sharpness: bool = False  # measure sharpness after training (costs extra passes)
    sharpness_radius: float = 1e-2  # relative radius r of the random perturbations
    sharpness_samples: int = 5  # random perturbations averaged


@dataclass
class RunConfig:
    out_dir: str | None = None  # where the run writes; null: runs/<data>-<model>-<time>
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...
    # auto: bf16 autocast on CUDA when supported, fp32 otherwise
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always saves)
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    # continue from a checkpoint: 'auto' (the latest in out_dir, if any) or a path to a
    # checkpoint file or directory; null starts fresh
    resume: str | None = None
    threads: int | None = None  # torch CPU threads; null: torch's default
    progress: bool = True  # tqdm bars for the training and evaluation loops


@dataclass
class Config:
    seed: int = 0  # seeds weights of new heads, data order, dropout and random perturbations
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Build and validate a config from nested dicts (missing keys take defaults)."""
        cfg = _convert(cls, data, "")
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts (tuples as lists), ready for YAML or JSON."""
        return _plain(dataclasses.asdict(self))

    def validate(self) -> None:
        """Range and cross-field checks; raises :class:`ConfigError` naming the key."""
        _check(self.seed >= 0, "seed", "expected an integer >= 0", self.seed)
        m, d, p, o, e, r = self.model, self.data, self.perturb, self.optim, self.eval, self.run
        _check(bool(m.name.strip()), "model.name", "must not be empty", m.name)
        if m.logit_scale_init is not None:
            _check(m.logit_scale_init > 0, "model.logit_scale_init", "expected > 0",
                   m.logit_scale_init)
        _check(0 <= m.combiner_dropout < 1, "model.combiner_dropout", "expected in [0, 1)",
               m.combiner_dropout)
        for key in ("combiner_proj_dim", "combiner_hidden_dim"):
            v = getattr(m, key)
            _check(v is None or v >= 1, f"model.{key}", "expected an integer >= 1", v)
        _check(d.max_triplets is None or d.max_triplets >= 1, "data.max_triplets",
               "expected an integer >= 1 or null", d.max_triplets)
        _check(d.num_workers >= 0, "data.num_workers", "expected >= 0", d.num_workers)
        _check(d.target_pad_ratio >= 1, "data.target_pad_ratio", "expected >= 1",
               d.target_pad_ratio)
        _check(p.radius >= 0 and math.isfinite(p.radius), "perturb.radius",
               "expected a finite number >= 0", p.radius)
        _check(p.perturb_every >= 1, "perturb.perturb_every", "expected >= 1", p.perturb_every)
        _check(bool(p.modules), "perturb.modules", "must name at least one module", p.modules)
        _check(p.min_ndim >= 0, "perturb.min_ndim", "expected >= 0", p.min_ndim)
        _check(o.lr > 0 and math.isfinite(o.lr), "optim.lr", "expected a number > 0", o.lr)
        _check(o.weight_decay >= 0, "optim.weight_decay", "expected >= 0", o.weight_decay)
        _check(all(0 <= b < 1 for b in o.betas), "optim.betas", "expected values in [0, 1)",
               o.betas)
        _check(o.eps > 0, "optim.eps", "expected > 0", o.eps)
        _check(o.epochs >= 1, "optim.epochs", "expected an integer >= 1", o.epochs)
        _check(o.batch_size >= 2, "optim.batch_size",
               "expected >= 2 (in-batch targets are the negatives)", o.batch_size)
        _check(o.warmup_steps >= 0, "optim.warmup_steps", "expected >= 0", o.warmup_steps)
        _check(o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip", "expected > 0 or null",
               o.grad_clip)
        _check(e.batch_size >= 1, "eval.batch_size", "expected >= 1", e.batch_size)
        _check(e.probe_queries is None or e.probe_queries >= 1, "eval.probe_queries",
               "expected >= 1 or null", e.probe_queries)
        _check(e.every >= 1, "eval.every", "expected >= 1", e.every)
        _check(e.sharpness_radius > 0, "eval.sharpness_radius", "expected > 0",
               e.sharpness_radius)
        _check(e.sharpness_samples >= 1, "eval.sharpness_samples", "expected >= 1",
               e.sharpness_samples)
        _check(r.checkpoint_every >= 1, "run.checkpoint_every", "expected >= 1",
               r.checkpoint_every)
        _check(r.keep_checkpoints >= 1, "run.keep_checkpoints", "expected >= 1",
               r.keep_checkpoints)
        _check(r.threads is None or r.threads >= 1, "run.threads", "expected >= 1 or null",
               r.threads)
        _check(r.device == "auto" or r.device == "cpu" or r.device.startswith("cuda")
               or r.device == "mps", "run.device", "expected auto, cpu, cuda[:N] or mps",
               r.device)


def _check(ok: bool, key: str, what: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {what}, got {value!r}")


# ---------------------------------------------------------------------------------------
# strict conversion of plain data into the dataclasses


def _convert(tp: Any, value: Any, key: str) -> Any:
    where = key or "config"
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of keys, got {_show(value)}")
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        unknown = [k for k in value if k not in names]
        if unknown:
            bad = f"{key}.{unknown[0]}" if key else str(unknown[0])
            raise ConfigError(f"{bad}: unknown key (known here: {', '.join(names)})")
        kwargs = {k: _convert(hints[k], v, f"{key}.{k}" if key else k) for k, v in value.items()}
        return tp(**kwargs)
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{where}: expected {_describe(tp)}, got {_show(value)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, allowed))}, "
                              f"got {_show(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads '1e-3' (no dot) as a string; accept what is plainly a number
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_show(value)}")
        return value
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        items = get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise ConfigError(f"{where}: expected a list of {len(items)} values, "
                              f"got {_show(value)}")
        return tuple(_convert(t, v, f"{where}[{i}]") for i, (t, v) in
                     enumerate(zip(items, value, strict=True)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        return dict(value)
    raise TypeError(f"config field {where} has an unsupported type {tp!r}")  # a bug, not input


def _describe(tp: Any) -> str:
    args = [a for a in get_args(tp) if a is not type(None)]
    return " or ".join(getattr(a, "__name__", str(a)) for a in args) + " or null"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------
# files, overrides, flat keys


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` (no Python object tags).

    Raises :class:`ConfigError` naming the file if it is missing, not YAML or not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top, got "
                          f"{type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``'optim.lr=1e-4'`` -> ``('optim.lr', 1e-4)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_by_path(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``key='a.b'``, creating mappings on the way.

    A key whose path is not a config section gets rejected later by :meth:`Config.from_dict`.
    """
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(parents[: i + 1])}: is a value, not a section")
        node = nxt
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (or start from the defaults), apply ``key=value`` overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    for text in overrides:
        set_by_path(data, *parse_override(text))
    return Config.from_dict(data)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (the run's record of what it ran)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def flatten(config: Config | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Leaf values by dotted key: ``{'optim.lr': 1e-4, 'perturb.kind': 'wrf', ...}``.

    Lists and free-form mappings (``data.recipe``) stay single leaves.
    """
    data = config.to_dict() if isinstance(config, Config) else config
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "recipe":
            out.update(flatten(v, prefix=f"{key}."))
        else:
            out[key] = v
    return out


def config_keys() -> list[str]:
    """Every dotted leaf key a config accepts (for validating study grids and searches)."""
    return list(flatten(Config()).keys())
