"""``evergreen`` command line: specs, demo data, one-off ETL, backtests, rollback, decision history and online
serving."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
from collections.abc import Sequence


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _cmd_specs_validate(args: argparse.Namespace) -> int:
    from evergreen.spec import SpecError, load_spec, spec_files

    failed = 0
    files = spec_files(args.dir)
    for path in files:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            failed += 1
            print(f"FAIL {exc}", file=sys.stderr)
            continue
        print(f"ok   {path}: {spec.name} ({spec.task_type.value}, {len(spec.features)} features)")
    if not files:
        print("no spec files found", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _cmd_specs_list(args: argparse.Namespace) -> int:
    from evergreen.spec import load_specs

    for spec in load_specs(args.dir).values():
        print(f"{spec.name}\t{spec.task_type.value}\t{spec.source.kind}:{spec.source.path}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from evergreen.simulate import land_days
    from evergreen.spec import get_spec

    written = land_days(
        get_spec(args.spec),
        args.start,
        args.end,
        seed=args.seed,
        drift=args.drift,
        drift_start=args.drift_start,
        label_noise=args.label_noise,
        rows=args.rows,
        skip_days=args.skip_day or (),
    )
    for uri in written:
        print(uri)
    print(f"landed {len(written)} day(s) for {args.spec}", file=sys.stderr)
    return 0


def _cmd_etl(args: argparse.Namespace) -> int:
    from evergreen.errors import DataQualityError
    from evergreen.etl.ingest import run_feature_etl
    from evergreen.spec import get_spec

    spec = get_spec(args.spec)
    day = args.start
    status = 0
    while day <= (args.end or args.start):
        try:
            print(json.dumps(run_feature_etl(spec, day), sort_keys=True))
        except DataQualityError as exc:
            print(str(exc), file=sys.stderr)
            status = 1
        day += dt.timedelta(days=1)
    return status


def _cmd_rollback(args: argparse.Namespace) -> int:
    from evergreen.registry import RegistryError, rollback
    from evergreen.spec import get_spec

    try:
        decision = rollback(
            get_spec(args.spec),
            target_version=args.to_version,
            actor=f"cli:{getpass.getuser()}",
            reason=args.reason,
        )
    except RegistryError as exc:
        print(f"evergreen rollback: refused: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(decision, indent=2, sort_keys=True, default=str))
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    from evergreen.registry import decision_history
    from evergreen.spec import get_spec

    for record in decision_history(get_spec(args.spec)):
        reasons = "; ".join(record.get("reasons") or [])
        print(f"{record.get('decided_at')}  {record.get('kind'):<12} version={record.get('version')} "
              f"champion {record.get('champion_before')} -> {record.get('champion_after')}  "
              f"by {record.get('actor')}  {reasons}")
    return 0


def _cmd_backtest(args: argparse.Namespace) -> int:
    from evergreen.backtest import parse_policies, run_backtest, write_report
    from evergreen.spec import get_spec

    policies = parse_policies(args.policies)
    report = run_backtest(get_spec(args.spec), args.start, args.end, policies, window_days=args.window_days)
    paths = write_report(report, args.out)
    print(f"{'policy':<12} {report['metric']:>10} {report['primary_metric']:>10} retrains promotions alarms  compute_s")
    for name, p in report["policies"].items():
        score = "n/a" if p["score"] is None else f"{p['score']:.4f}"
        primary = "n/a" if p["primary_score"] is None else f"{p['primary_score']:.4f}"
        print(f"{name:<12} {score:>10} {primary:>10} {p['retrains']:>8} {p['promotions']:>10} {p['alarms']:>6} "
              f"{p['compute_seconds']:>10.1f}")
    print(f"{report['days']} days, {report['fits']} fits in {report['fit_seconds']:.1f} s, "
          f"{report['wall_seconds']:.1f} s in all; wrote {paths['json']} and {paths['html']}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from evergreen.serving import serve
    from evergreen.spec import get_spec

    options = {"poll_seconds": args.poll_seconds} if args.poll_seconds is not None else {}
    serve(get_spec(args.spec), host=args.host, port=args.port, **options)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evergreen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    specs = sub.add_parser("specs", help="inspect pipeline specs").add_subparsers(dest="action", required=True)
    for name, handler, text in (("validate", _cmd_specs_validate, "check every spec file"),
                                ("list", _cmd_specs_list, "list specs")):
        cmd = specs.add_parser(name, help=text)
        cmd.add_argument("--dir", help="extra specs folder (default: $EVERGREEN_SPECS_DIR)")
        cmd.set_defaults(func=handler)

    sim = sub.add_parser("simulate", help="land simulated raw daily data for a demo spec")
    sim.add_argument("--spec", required=True)
    sim.add_argument("--start", type=_date, required=True)
    sim.add_argument("--end", type=_date, required=True)
    sim.add_argument("--drift", choices=["covariate", "label_prior", "concept"])
    sim.add_argument("--drift-start", type=_date)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--label-noise", type=float, default=0.0, help="fraction of labels to corrupt")
    sim.add_argument("--rows", type=int, help="rows per day (default from the spec)")
    sim.add_argument("--skip-day", type=_date, action="append", help="leave this day out (repeatable)")
    sim.set_defaults(func=_cmd_simulate)

    etl = sub.add_parser("etl", help="run the feature ETL in this process (no scheduler) for a day or range")
    etl.add_argument("--spec", required=True)
    etl.add_argument("--start", type=_date, required=True)
    etl.add_argument("--end", type=_date)
    etl.set_defaults(func=_cmd_etl)

    rb = sub.add_parser("rollback", help="move the champion alias back (default: to previous_champion)")
    rb.add_argument("--spec", required=True)
    rb.add_argument("--to-version", help="model version to make champion")
    rb.add_argument("--reason", default="manual rollback from the CLI")
    rb.set_defaults(func=_cmd_rollback)

    bt = sub.add_parser("backtest", help="replay published history under retraining policies (data-time clock)")
    bt.add_argument("--spec", required=True)
    bt.add_argument("--start", type=_date, required=True, help="first day scored (the initial model is trained "
                                                               "on the window ending the day before)")
    bt.add_argument("--end", type=_date, required=True)
    bt.add_argument("--policies", default="static,every:1,every:7,gated:1,triggered,performance",
                    help="comma-separated: static, every:N, gated:N, triggered, performance")
    bt.add_argument("--window-days", type=int, help="training window (default: the spec's window.days)")
    bt.add_argument("--out", required=True, help="folder for backtest.json and backtest.html")
    bt.set_defaults(func=_cmd_backtest)

    hist = sub.add_parser("history", help="print the promotion decision log of a spec")
    hist.add_argument("--spec", required=True)
    hist.set_defaults(func=_cmd_history)

    srv = sub.add_parser("serve", help="serve the spec's @champion over HTTP, following the alias (docs/serving.md)")
    srv.add_argument("--spec", required=True)
    srv.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--poll-seconds", type=float, help="how often to read the alias "
                                                        "(default: $EVERGREEN_SERVING_POLL_SECONDS, 30)")
    srv.set_defaults(func=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from evergreen.errors import EvergreenError
    from evergreen.spec import SpecError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (SpecError, EvergreenError) as exc:  # the user's input or data: a message, not a traceback
        print(f"evergreen {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
