"""``edged-cloud monitor``: the fleet's models from the capture lake; ``monitor ddl``."""

from __future__ import annotations

import argparse
import re

from edged_cloud.errors import BadInput

#: Exit status of --fail-on when a condition it names holds (sysexits has none for
#: "checked and found wanting"; 1 is a plain failure, kept for errors).
EX_FLAGGED = 3
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
FAIL_ON = ("drift", "silent", "behind")


def duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration like 90s, 30m, 2h or 7d")
    return float(match[1]) * _UNITS[match[2]]


def fail_on(text: str) -> set[str]:
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = names - set(FAIL_ON)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown condition(s) {sorted(unknown)}: "
                                         f"choose from {', '.join(FAIL_ON)}")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor", help="how the fleet's models are doing: drift, silence, versions",
        description="Read the capture lake (a folder or s3://bucket/prefix) where it lies "
                    "with DuckDB and report per device and model version: anomaly rate, "
                    "errors against thresholds, input drift (PSI against the training "
                    "distribution, KS on sampled windows), silent devices, devices behind on "
                    "version, rollouts in progress. `monitor ddl` prints Athena/Spark tables.")
    p.add_argument("lake", metavar="LAKE", help="capture folder or s3://bucket/prefix")
    p.add_argument("--heartbeats", metavar="PATH",
                   help="heartbeat reports (JSON lines, folder or s3://), to tell alive from "
                        "silent besides the lake's records")
    p.add_argument("--baseline", metavar="[VERSION=]PATH", action="append", default=[],
                   help="expected inputs: a bundle, model directory or manifest with a "
                        "monitoring section, or a training output; VERSION= for one model "
                        "version (default: the fleet's own first 24 h per version)")
    p.add_argument("--since", type=duration, default=7 * 86400, metavar="DURATION",
                   help="how far back to read (default 7d)")
    p.add_argument("--silent-after", type=duration, default=7200, metavar="DURATION",
                   help="a device heard from longer ago is silent (default 2h)")
    p.add_argument("--psi-limit", type=float, default=0.2,
                   help="a feature with a PSI over this has drifted (default 0.2)")
    p.add_argument("--now", type=float, help=argparse.SUPPRESS)  # replaying a lake
    p.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto), path-style")
    p.add_argument("--region", help="AWS region of the lake's bucket")
    p.add_argument("--html", metavar="FILE", help="write the HTML report with plots here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--fail-on", type=fail_on, default=set(), metavar="drift,silent,behind",
                   help=f"exit {EX_FLAGGED} when any device is flagged so (for cron and CI)")
    # `monitor ddl` is LAKE "ddl" with these options: a sub-command beside a positional
    # is not something argparse parses (a lake folder named ddl is ./ddl).
    d = p.add_argument_group("edged-cloud monitor ddl --engine ENGINE --location S3URL",
                             "print CREATE TABLE statements for the lake's sketches and "
                             "decisions (Athena: partition projection)")
    d.add_argument("--engine", choices=("athena", "spark"))
    d.add_argument("--location", metavar="s3://BUCKET/PREFIX")
    d.add_argument("--devices", help="Athena: comma-separated devices for an enum projection "
                                     "(default injected: queries must name the device)")
    d.add_argument("--models", help="Athena: comma-separated model names (enum projection)")
    d.add_argument("--queries", action="store_true", help="also print the shared queries")
    p.set_defaults(func=run_monitor)


def _baselines(specs: list[str]) -> dict:
    from pathlib import Path

    from edged_cloud.monitor import baseline

    out = {}
    for spec in specs:
        version, sep, path = spec.partition("=")
        if sep and version.isdigit():
            out[int(version)] = baseline.load(Path(path))
        else:
            out[None] = baseline.load(Path(spec))
    return out


def run_monitor(args: argparse.Namespace) -> int:
    if args.lake == "ddl":
        return run_ddl(args)
    if args.engine or args.location:
        raise BadInput("--engine and --location belong to `edged-cloud monitor ddl`")
    import json
    import time

    from edged_cloud.monitor import report
    from edged_cloud.monitor.lake import Lake

    if args.psi_limit <= 0:
        raise BadInput(f"--psi-limit {args.psi_limit}: must be positive")
    options = report.Options(now=args.now or time.time(), since_s=args.since,
                             silent_after_s=args.silent_after, psi_limit=args.psi_limit,
                             baselines=_baselines(args.baseline), heartbeats=args.heartbeats)
    lake = Lake(args.lake, endpoint_url=args.endpoint_url, region=args.region)
    result = report.build(lake, options)
    if args.html:
        from pathlib import Path

        from edged_cloud.monitor import html

        Path(args.html).write_text(html.render(result, options))
    result.pop("_series", None)
    result.pop("_baselines", None)
    print(json.dumps(result, indent=2) if args.json else report.table(result))
    fleet = result["fleet"]
    flagged = {"drift": fleet["drifted"], "silent": fleet["silent"],
               "behind": fleet["behind"]}
    return EX_FLAGGED if any(flagged[c] for c in args.fail_on) else 0


def _names(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def run_ddl(args: argparse.Namespace) -> int:
    from edged_cloud.monitor import sql

    if not args.engine or not args.location:
        raise BadInput("monitor ddl needs --engine athena|spark and --location s3://...")
    if not args.location.startswith(("s3://", "s3a://")):
        raise BadInput(f"--location {args.location}: an s3://bucket/prefix")
    text = (sql.athena_ddl(args.location, devices=_names(args.devices),
                           models=_names(args.models)) if args.engine == "athena"
            else sql.spark_ddl(args.location))
    print(text + ("\n" + sql.queries_text() if args.queries else ""), end="")
    return 0
