"""The ``wrf4cir-study`` command: run, resume, extend, status, export, report, fault-drill.

Bad input (spec, study folder, flags) exits with code 2 and one line on stderr before
any Ray instance starts or any folder is created.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from study.defaults import MIN_FREE_GB, SCENARIOS, drill_storage_error, scenario_error

log = logging.getLogger("study")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wrf4cir-study", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more output (-v: Ray's trial table and worker logs)")
    sub = p.add_subparsers(dest="command", required=True)

    def room(q: argparse.ArgumentParser) -> None:
        q.add_argument("--min-free-gb", type=float, default=MIN_FREE_GB, metavar="GB",
                       help="refuse to start, and stop (resumably) while running, when the "
                            f"study folder's disk has less free (default {MIN_FREE_GB:g}; "
                            "0: no check)")

    def cluster(q: argparse.ArgumentParser) -> None:
        q.add_argument("--address", help="join a Ray cluster from one of its nodes ('auto', "
                                         "'HEAD_IP:6379'; not Ray Client's ray://); "
                                         "default: start a local Ray instance")
        q.add_argument("--no-ship-code", dest="ship_code", action="store_false",
                       help="on a cluster, do not ship wrf4cir/study to the workers "
                            "(they have it installed)")

    r = sub.add_parser("run", help="launch a study from a spec")
    r.add_argument("spec", type=Path, help="study spec (YAML), e.g. experiments/smoke.yaml")
    r.add_argument("--name", help="study name (default: the spec's)")
    r.add_argument("--storage", default="results",
                   help="where studies live: a local folder (default: results/) or a URI "
                        "Ray's storage understands (s3://..., gs://...) for trial checkpoints")
    cluster(r)
    room(r)

    s = sub.add_parser("resume", help="continue an interrupted study")
    s.add_argument("study_dir", type=Path)
    cluster(s)
    room(s)

    e = sub.add_parser("extend", help="add trials to a finished study")
    e.add_argument("study_dir", type=Path)
    e.add_argument("--samples", type=int, required=True,
                   help="more Optuna trials per grid cell (searches) or more seeds (grids)")
    cluster(e)
    room(e)

    st = sub.add_parser("status", help="what a study has done (running, crashed or finished)")
    st.add_argument("study_dir", type=Path)

    x = sub.add_parser("export", help="write trials.parquet and epochs.parquet")
    x.add_argument("study_dir", type=Path)
    x.add_argument("--out", type=Path, help="output folder (default: STUDY_DIR)")

    fd = sub.add_parser("fault-drill",
                        help="break a Ray cluster on purpose (a node, the driver, a trial's "
                             "process, a checkpoint) and check that no result is lost")
    fd.add_argument("--storage", default="results/fault-drill",
                    help="folder for the drill's studies (on a cluster: one every node "
                         "mounts); default: results/fault-drill/")
    fd.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated, from {','.join(SCENARIOS)} (default: all)")
    cluster(fd)

    rp = sub.add_parser("report", help="gap tables, heatmaps and curves from the export")
    rp.add_argument("study_dir", type=Path,
                    help="a study folder, or any folder holding trials.parquet and "
                         "epochs.parquet (e.g. copied off a cluster)")
    rp.add_argument("--out", type=Path, help="output folder (default: STUDY_DIR/report)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    for name in ("study", "wrf4cir"):
        logging.getLogger(name).setLevel(logging.INFO if args.verbose or args.command in
                                         ("run", "resume", "extend") else logging.WARNING)
    from study.runner import StudyError
    from study.spec import SpecError

    try:
        if (getattr(args, "address", None) or "").startswith("ray://"):
            # Ray Client runs Tune's driver loop, and with it the ledger writer and the
            # fault injector, on the head node, away from this study folder
            raise SpecError(f"--address {args.address}: Ray Client addresses are not "
                            "supported; run wrf4cir-study on a node of the cluster with "
                            "--address auto (or HEAD_IP:6379)")
        return _COMMANDS[args.command](args)
    except (SpecError, StudyError) as exc:
        print(f"wrf4cir-study: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wrf4cir-study: interrupted; continue with `wrf4cir-study resume STUDY_DIR`",
              file=sys.stderr)
        return 130


def _finish(study_dir: Path) -> int:
    """Export what the driver left; 130 if it was interrupted (Ctrl-C) before the end."""
    from study.export import export_study
    from study.runner import read_meta

    print(f"study {study_dir}\nexported {export_study(study_dir)}")
    if any(r["status"] != "finished" for r in read_meta(study_dir)["runs"]):
        print(f"wrf4cir-study: interrupted; continue with `wrf4cir-study resume {study_dir}`",
              file=sys.stderr)
        return 130
    return 0


def _run(args: argparse.Namespace) -> int:
    from study.runner import run_study
    from study.spec import load_spec

    study = load_spec(args.spec, check_local=args.address is None)
    return _finish(run_study(study, storage=args.storage, name=args.name,
                             address=args.address, ship_code=args.ship_code,
                             verbose=args.verbose, min_free_gb=args.min_free_gb))


def _resume(args: argparse.Namespace) -> int:
    from study.runner import resume_study

    return _finish(resume_study(args.study_dir, address=args.address,
                                ship_code=args.ship_code, verbose=args.verbose,
                                min_free_gb=args.min_free_gb))


def _extend(args: argparse.Namespace) -> int:
    from study.runner import extend_study

    return _finish(extend_study(args.study_dir, args.samples, address=args.address,
                                ship_code=args.ship_code, verbose=args.verbose,
                                min_free_gb=args.min_free_gb))


def _status(args: argparse.Namespace) -> int:
    from study.status import study_status

    print(study_status(args.study_dir))
    return 0


def _export(args: argparse.Namespace) -> int:
    from study.export import export_study

    print(export_study(args.study_dir, args.out))
    return 0


def _report(args: argparse.Namespace) -> int:
    from study.export import export_study
    from study.ledger import FILENAME as LEDGER_FILE
    from study.report import build_report
    from study.runner import StudyError

    folder = args.study_dir.expanduser().resolve()
    if (folder / LEDGER_FILE).is_file():
        export_study(folder)  # refresh the export of a live study folder first
    missing = [n for n in ("trials.parquet", "epochs.parquet") if not (folder / n).is_file()]
    if missing:
        raise StudyError(f"{folder}: no {missing[0]} (run `wrf4cir-study export` first)")
    print(build_report(folder, args.out) / "index.html")
    return 0


def _fault_drill(args: argparse.Namespace) -> int:
    from study.spec import SpecError

    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if error := scenario_error(scenarios):
        raise SpecError(error)
    if error := drill_storage_error(args.storage):
        raise SpecError(error)
    from study.drill import run_drill
    from study.runner import check_storage

    check_storage(Path(args.storage).expanduser().resolve(), args.storage, MIN_FREE_GB)
    where = args.address or "a local cluster (head + 2 worker nodes)"
    print(f"fault drill on {where}: {', '.join(scenarios)}", flush=True)
    if args.address:
        print(f"(every node must reach {args.storage}: trials write their checkpoints there)",
              flush=True)
    outcomes = run_drill(args.address, args.storage, scenarios, ship_code=args.ship_code,
                         report=lambda line: print(line, flush=True))
    failed = [o.scenario for o in outcomes if not o.passed]
    print("\nsummary:\n" + "\n".join(o.lines()[0] for o in outcomes))
    print("fault drill: " + (f"FAILED ({', '.join(failed)})" if failed else
                             f"all {len(outcomes)} scenarios passed"))
    return 1 if failed else 0


_COMMANDS = {"run": _run, "resume": _resume, "extend": _extend, "status": _status,
             "export": _export, "report": _report, "fault-drill": _fault_drill}


if __name__ == "__main__":
    raise SystemExit(main())
