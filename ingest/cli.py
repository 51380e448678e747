"""``conveyor ingest profile`` and ``conveyor ingest validate``.

profile: infer a spec (unless ``--spec``), validate every row, profile the valid ones, and write
DIR/spec.json, DIR/stats.json, DIR/quarantine.parquet (if any row was quarantined) and
DIR/report.json (rows in/out/quarantined by rule), printing the report.
validate: check a source against a pinned spec (profiled ranges from stats.json beside it are
applied); exits non-zero when a ``reject`` rule fires.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _policy(text: str) -> tuple[str, str]:
    """``RULE=POLICY``, checked here so that a bad one is blamed on --policy at once."""
    from conveyor.ingest.spec import ALLOWED_POLICIES, POLICIES, RULES

    rule, sep, policy = (part.strip() for part in text.partition("="))
    if not sep:
        raise argparse.ArgumentTypeError(f"expected RULE=POLICY, got {text!r}")
    if rule not in RULES:
        raise argparse.ArgumentTypeError(
            f"{text}: unknown rule {rule!r} (rules: {', '.join(RULES)})"
        )
    allowed = ALLOWED_POLICIES.get(rule, POLICIES)
    if policy not in allowed:
        raise argparse.ArgumentTypeError(
            f"{text}: rule {rule!r} takes {', '.join(allowed)}, not {policy!r}"
        )
    return rule, policy


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _print_report(report: dict) -> None:
    acc = report["accounting"]
    print(f"rows in           {acc['rows_in']}")
    print(f"rows out          {acc['rows_out']}")
    print(f"rows quarantined  {acc['rows_quarantined']}")
    for rule, n in acc["quarantined_by_rule"].items():
        print(f"  {rule:<16}{n}")
    for rule, n in acc["imputed_by_rule"].items():
        print(f"imputed ({rule}) {n}")
    if report.get("quarantine"):
        print(f"quarantine        {report['quarantine']}")


def _source(args: argparse.Namespace, spec=None):
    """The source; with a pinned spec, CSV/JSON columns are read as the spec's types."""
    from conveyor.ingest.errors import FormatError
    from conveyor.ingest.formats import FORMAT_FLAG_HINT
    from conveyor.ingest.source import Source

    types = spec.declared_types() if spec is not None else None
    if types is None and getattr(args, "timestamp", None):  # an inferred spec's timestamp
        types = {args.timestamp: "timestamp"}
    try:
        return Source(args.source, format=args.format, types=types)
    except FormatError as exc:  # its hint is the Python API's format=
        raise exc.with_hint(FORMAT_FLAG_HINT) from None


def _with_policies(spec, args: argparse.Namespace):
    """``spec`` with the --policy overrides, checked that every impute policy has a value to
    write; the error names where that policy came from: --policy, or the spec file."""
    from conveyor.ingest.errors import SpecError

    overrides = dict(args.policy)
    if overrides:
        spec = spec.with_policies(overrides)
    for name, rule in spec.missing_impute_values()[:1]:
        if overrides.get(rule) != "impute":  # the spec file's own policy
            raise SpecError(
                f"{args.spec}: rule {rule!r} has the impute policy, but numeric {name!r} has "
                'no "impute" value to write (set one there)'
            )
        if args.spec is None:
            raise SpecError(
                f'--policy {rule}=impute: numeric {name!r} has no "impute" value to write '
                '(an inferred spec has none: profile without this policy, set "impute" in '
                "the spec.json it writes, and pass that with --spec)"
            )
        raise SpecError(
            f'--policy {rule}=impute: numeric {name!r} has no "impute" value in {args.spec} '
            "to write (set one there)"
        )
    return spec


def _spec(args: argparse.Namespace):
    from conveyor.ingest.spec import FeatureSpec

    return _with_policies(FeatureSpec.load(args.spec), args)


def run_profile(args: argparse.Namespace) -> int:
    from conveyor.ingest.errors import IngestError
    from conveyor.ingest.infer import infer_spec
    from conveyor.ingest.profile import ProfileConfig, write_stats
    from conveyor.ingest.quarantine import local_output
    from conveyor.ingest.scan import run_scan

    if not args.spec and args.label is None:  # before any data is read
        raise IngestError("give --label COL (to infer a spec) or --spec FILE (to apply one)")
    out = local_output(args.out, "--out")
    if out.exists() and not out.is_dir():
        raise IngestError(f"--out {out}: exists and is not a directory")
    if args.spec:
        spec = _spec(args)
        if args.label is not None and spec.label.name != args.label:
            from conveyor.ingest.errors import SpecError

            raise SpecError(f"{args.spec}: label is {spec.label.name!r}, not {args.label!r}")
        source = _source(args, spec)
    else:
        source = _source(args)
        spec = infer_spec(
            source,
            args.label,
            weight=args.weight,
            timestamp=args.timestamp,
            key=args.key,
            include_partitions=args.include_partition_columns,
        )
        spec = _with_policies(spec, args)
        if source.format in ("csv", "json"):  # read text as the inferred spec's types
            source = _source(args, spec)
    out.mkdir(parents=True, exist_ok=True)
    quarantine = out / "quarantine.parquet"
    quarantine.unlink(missing_ok=True)
    result = run_scan(
        source,
        spec,
        quarantine_path=quarantine,
        profile=ProfileConfig(n_bins=args.bins, top_k=args.top_k),
    )
    spec.save(out / "spec.json")
    write_stats(result.stats, out / "stats.json")
    report = {
        "version": 1,
        "source": args.source,
        "accounting": result.accounting.to_dict(),
        "quarantine": str(result.quarantine) if result.quarantine else None,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _print_report(report)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from conveyor.ingest.profile import load_stats, profiled_ranges
    from conveyor.ingest.quarantine import local_output
    from conveyor.ingest.scan import run_scan

    quarantine = local_output(args.quarantine, "--quarantine")
    if args.report:
        local_output(args.report, "--report")
    spec = _spec(args)
    source = _source(args, spec)
    stats_path = Path(args.spec).with_name("stats.json")
    ranges = profiled_ranges(load_stats(stats_path)) if stats_path.exists() else None
    quarantine.unlink(missing_ok=True)
    result = run_scan(source, spec, quarantine_path=quarantine, ranges=ranges)
    report = {
        "version": 1,
        "source": args.source,
        "accounting": result.accounting.to_dict(),
        "quarantine": str(result.quarantine) if result.quarantine else None,
    }
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    _print_report(report)
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from conveyor.cli import add_command
    from conveyor.ingest.formats import add_format_flag

    group = add_command(subparsers, "ingest", help="read, validate and profile datasets")
    sub = group.add_subparsers(title="ingest commands", metavar="COMMAND", required=True)

    def shared(p: argparse.ArgumentParser) -> None:
        p.add_argument("source", help="file, directory, glob or URI (s3://...)")
        add_format_flag(p)
        p.add_argument(
            "--policy",
            nargs="+",
            type=_policy,
            default=[],
            metavar="RULE=POLICY",
            help="override rules' policies: reject, quarantine or impute (extra_column: reject "
            "or ignore; allowed per rule: ingest/README.md), e.g. nan=reject range=quarantine",
        )

    prof = add_command(
        sub,
        "profile",
        help="infer or apply a spec, validate, and write spec/stats/report",
        parents=[common],
        run=run_profile,
        path=("ingest",),
    )
    shared(prof)
    prof.add_argument(
        "--label",
        default=None,
        help="label column: infer a spec (required without --spec; with it, must be its label)",
    )
    prof.add_argument(
        "--spec", default=None, metavar="FILE", help="use this spec, not inference (no --label)"
    )
    prof.add_argument("--out", required=True, metavar="DIR", help="output directory")
    prof.add_argument("--weight", default=None, help="weight column (inference only)")
    prof.add_argument("--timestamp", default=None, help="timestamp column (inference only)")
    prof.add_argument("--key", default=None, help="key column (inference only)")
    prof.add_argument(
        "--include-partition-columns",
        action="store_true",
        help="make hive partition columns (key=value directories) features; by default an "
        "inferred spec puts them in ignore (inference only)",
    )
    prof.add_argument("--bins", type=_positive, default=20, help="quantile bins (default: 20)")
    prof.add_argument("--top-k", type=_positive, default=20, help="categorical top-K (default: 20)")

    val = add_command(
        sub,
        "validate",
        help="validate a source against a spec; non-zero exit on reject",
        parents=[common],
        run=run_validate,
        path=("ingest",),
    )
    shared(val)
    val.add_argument("--spec", required=True, metavar="FILE", help="DIR/spec.json")
    val.add_argument(
        "--quarantine",
        default="quarantine.parquet",
        metavar="FILE",
        help="quarantine file (default: quarantine.parquet)",
    )
    val.add_argument("--report", default=None, metavar="FILE", help="also write report JSON")
