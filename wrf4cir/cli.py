"""The ``wrf4cir`` command: train, pretrain, make-data, list.

Bad input (config, data, model, checkpoint) exits with code 2 and one line on stderr,
before any work starts; a diverging run exits with code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from wrf4cir import __version__

log = logging.getLogger("wrf4cir")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wrf4cir", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"wrf4cir {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune one model and report the gap every epoch")
    t.add_argument("--config", type=Path, help="YAML training config (default: built-ins)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set perturb.radius=1e-3 (repeatable)")
    t.add_argument("--out", type=Path, help="run directory (sets run.out_dir)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the run directory")

    pt = sub.add_parser("pretrain", help="pre-train a tiny backbone on synthetic captions")
    pt.add_argument("--model", default="wrf-tiny-vit", help="architecture (default %(default)s)")
    pt.add_argument("--pairs", type=int, help="image-caption pairs")
    pt.add_argument("--epochs", type=int, help="epochs")
    pt.add_argument("--threads", type=int, help="torch CPU threads")
    pt.add_argument("--force", action="store_true", help="retrain even if cached")

    d = sub.add_parser("make-data", help="generate a synthetic CIR dataset on disk")
    d.add_argument("--name", default="synthetic-shapes", help="dataset (default %(default)s)")
    d.add_argument("--out", type=Path, required=True, help="directory to write")
    d.add_argument("--seed", type=int, help="generator seed")
    d.add_argument("--train-triplets", type=int, help="training triplets to generate")
    d.add_argument("--val-triplets", type=int, help="validation queries to generate")
    d.add_argument("--image-size", type=int, help="image side in pixels")

    sub.add_parser("list", help="list the model architectures and datasets")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # our loggers at INFO; everyone else's (open_clip logs its model building to the root
    # logger at INFO) only from WARNING
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    from wrf4cir.checkpoint import CheckpointError
    from wrf4cir.config import ConfigError
    from wrf4cir.data import DataError
    from wrf4cir.models import ModelError
    from wrf4cir.trainer import NonFiniteLossError

    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, DataError, ModelError, CheckpointError) as exc:
        print(f"wrf4cir: error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"wrf4cir: training diverged: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("wrf4cir: interrupted", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> int:
    from wrf4cir.config import load_config
    from wrf4cir.trainer import fit, preflight

    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"run.out_dir={args.out}")
    if args.resume:
        overrides.append("run.resume=auto")
    config = load_config(args.config, overrides)
    preflight(config)
    history = fit(config)
    final = history.final
    print(f"done: val headline {final.get('val/headline', float('nan')):.2f}, "
          f"gap {final.get('gap/headline', float('nan')):+.2f}; run in {history.out_dir}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from wrf4cir.models import check_architecture
    from wrf4cir.pretrain import DEFAULT_PRETRAIN, ensure_pretrained

    check_architecture(args.model)
    changes = {k: v for k, v in (("pairs", args.pairs), ("epochs", args.epochs),
                                 ("threads", args.threads)) if v is not None}
    config = dataclasses.replace(DEFAULT_PRETRAIN, **changes)
    path = ensure_pretrained(args.model, config, force=args.force)
    print(path)
    return 0


def _make_data(args: argparse.Namespace) -> int:
    from wrf4cir.data import DataError
    from wrf4cir.data.synthetic import RECIPES, generate

    if args.name not in RECIPES:
        raise DataError(f"--name: {args.name!r} is not a synthetic dataset; "
                        f"known: {', '.join(sorted(RECIPES))}")
    changes = {k: v for k, v in (("seed", args.seed), ("train_triplets", args.train_triplets),
                                 ("val_triplets", args.val_triplets),
                                 ("image_size", args.image_size)) if v is not None}
    recipe = dataclasses.replace(RECIPES[args.name], **changes)
    print(generate(args.name, args.out, recipe))
    return 0


def _list(args: argparse.Namespace) -> int:
    from wrf4cir.data import list_datasets
    from wrf4cir.models import PROJECT_ARCHITECTURES, list_architectures

    print("project architectures: " + ", ".join(PROJECT_ARCHITECTURES))
    print("open_clip architectures: " + ", ".join(
        n for n in list_architectures() if n not in PROJECT_ARCHITECTURES))
    print("datasets: " + ", ".join(list_datasets()))
    return 0


_COMMANDS = {"train": _train, "pretrain": _pretrain, "make-data": _make_data, "list": _list}


if __name__ == "__main__":
    raise SystemExit(main())
