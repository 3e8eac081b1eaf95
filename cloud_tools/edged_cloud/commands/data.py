"""``edged-cloud data synth|import|from-captures``: a training set in the prepared form
(docs/cloud.md, "data")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="prepare a training set",
        description="Prepare a wind-turbine training set, exactly as a device prepares "
                    "its rows: synthetic, from a CSV, or from the fleet's captures.")
    sub = parser.add_subparsers(dest="data_command", metavar="SOURCE", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-o", "--out", type=Path, required=True,
                       help="folder to write the prepared dataset into")
        p.add_argument("--stride", type=int, default=10,
                       help="rows between decision points (default 10: the device decides "
                            "every 0.5 s at 20 rows/s)")
        p.add_argument("--json", action="store_true",
                       help="print the dataset's summary (dataset.json) as JSON")

    synth = sub.add_parser(
        "synth", help="a labelled synthetic farm",
        description="Simulate a farm (edged's simulator), healthy and with each fault kind, "
                    "and write it as the dataset's CSV with a labels sidecar, plus the "
                    "prepared form.")
    common(synth)
    synth.add_argument("--turbines", type=int, default=4, help="turbines (default 4)")
    synth.add_argument("--seconds", type=float, default=600.0,
                       help="simulated seconds per turbine (default 600)")
    synth.add_argument("--rate", type=float, default=20.0, help="rows per second (default 20)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--faults", default="auto",
                       help="auto (the first half healthy, then every kind on every "
                            "turbine), none, or a schedule like 0:vibration@300-310,"
                            "1:voltage@400+10")
    synth.add_argument("--fault-seconds", type=float, default=10.0,
                       help="length of each fault with --faults auto (default 10)")
    synth.set_defaults(func=_synth)

    imp = sub.add_parser(
        "import", help="a CSV in the dataset's 23-column layout",
        description="Validate a CSV in the dataset's 23-column layout (header optional; a "
                    "24th column 'label' or --labels gives labels, else every row is "
                    "healthy) and prepare it.")
    imp.add_argument("file", type=Path, metavar="FILE.csv")
    common(imp)
    imp.add_argument("--labels", type=Path,
                     help="a sidecar with one label per data row (header 'label' optional)")
    imp.add_argument("--skip-bad", action="store_true",
                     help="skip and count rows the device would reject, instead of "
                          "stopping at the first")
    imp.set_defaults(func=_import)

    caps = sub.add_parser(
        "from-captures", help="a training set from captured decisions",
        description="Read the capture objects devices uploaded (a local folder or "
                    "s3://bucket/prefix; docs/capture.md) and prepare the buffers their "
                    "decision records carry (include_window or include_rows).")
    caps.add_argument("source", metavar="DIR|s3://BUCKET/PREFIX")
    common(caps)
    caps.add_argument("--anomalies", choices=("exclude", "label"), default="exclude",
                      help="leave anomalous decisions out (default) or keep them labelled")
    caps.add_argument("--model", help="only records of this model name")
    caps.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto)")
    caps.add_argument("--region", help="AWS region")
    caps.set_defaults(func=_captures)


def _finish(args: argparse.Namespace, dataset, extra: list[Path] = ()) -> int:  # type: ignore[assignment]
    from edged_cloud.data.dataset import save

    written = [*extra, *save(dataset, args.out)]
    if args.json:
        print(json.dumps(dataset.meta, indent=2))
    else:
        meta = dataset.meta
        labels = ", ".join(f"{k} {v}" for k, v in meta["labels"].items())
        print(f"{meta['rows']} rows of {len(meta['turbines'])} turbine(s), "
              f"{meta['decisions']} decisions ({labels})")
        for path in written:
            print(f"wrote {path}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from edged_cloud.data.synth import CSV_NAME, LABELS_NAME, synthesize

    dataset = synthesize(args.out, turbines=args.turbines, seconds=args.seconds,
                         rate_hz=args.rate, seed=args.seed, faults=args.faults,
                         fault_seconds=args.fault_seconds, stride=args.stride)
    return _finish(args, dataset, [args.out / CSV_NAME, args.out / LABELS_NAME])


def _import(args: argparse.Namespace) -> int:
    from edged_cloud.data.csv_import import import_csv

    dataset = import_csv(args.file, labels=args.labels, skip_bad=args.skip_bad,
                         stride=args.stride)
    if dataset.meta.get("rejected") and not args.json:
        print(f"skipped {sum(dataset.meta['rejected'].values())} rows: "
              + ", ".join(f"{k} {v}" for k, v in dataset.meta["rejected"].items()))
    return _finish(args, dataset)


def _captures(args: argparse.Namespace) -> int:
    from edged_cloud.data.captures import from_captures

    dataset = from_captures(args.source, anomalies=args.anomalies, model=args.model,
                            endpoint_url=args.endpoint_url, region=args.region)
    return _finish(args, dataset)
