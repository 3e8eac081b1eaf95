"""``edged-cloud train DATA -o OUTDIR``: the reference autoencoder on a prepared dataset,
here on the CPU or as a SageMaker training job (docs/cloud.md, "train")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train the wind-turbine autoencoder",
        description="Train the reference autoencoder on the healthy decisions of a prepared "
                    "dataset (edged-cloud data), compute its statistics and thresholds as "
                    "the reference does, export ONNX, check it against PyTorch and write "
                    "OUTDIR for edged-cloud package.")
    parser.add_argument("data", type=Path, metavar="DATA",
                        help="a prepared dataset folder (or its dataset.npz)")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="OUTDIR")
    parser.add_argument("--epochs", type=int, default=30, help="at most (default 30)")
    parser.add_argument("--batch-size", type=int, default=256, help="default 256")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument("--patience", type=int, default=5,
                        help="stop after this many epochs without a better validation "
                             "loss (0: never stop early; default 5)")
    parser.add_argument("--dropout", type=float, default=0.001, help="default 0.001")
    parser.add_argument("--holdout", type=float, default=0.2,
                        help="share of each turbine's healthy decisions held out, the "
                             "latest (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--threads", type=int, help="torch's CPU threads")
    parser.add_argument("--version", type=int, default=1,
                        help="the model version recorded in the report (default 1)")
    parser.add_argument("--denoise", choices=("reference", "textbook"), default="reference",
                        help="reference: threshold the wavelet approximation too (the "
                             "reference's quirk, default); textbook: leave it alone")
    parser.add_argument("--thresholds", choices=("reference", "quantile"),
                        default="reference",
                        help="reference: the mean training error per feature, as the "
                             "reference computes them (default; tight on data like the "
                             "training set); quantile: --margin x the --quantile of the "
                             "training errors, which healthy turbines stay under")
    parser.add_argument("--quantile", type=float, default=0.999,
                        help="with --thresholds quantile (default 0.999)")
    parser.add_argument("--margin", type=float, default=2.0,
                        help="with --thresholds quantile (default 2.0)")
    parser.add_argument("--json", action="store_true", help="print report.json")
    sm = parser.add_argument_group("SageMaker (--sagemaker)")
    sm.add_argument("--sagemaker", action="store_true",
                    help="run the same training as a SageMaker training job")
    sm.add_argument("--role-arn", help="the job's execution role")
    sm.add_argument("--image-uri", help="a training image with edged-cloud[train]")
    sm.add_argument("--instance-type", default="ml.m5.xlarge", help="default ml.m5.xlarge")
    sm.add_argument("--s3-input", help="s3://bucket/prefix the dataset is uploaded to")
    sm.add_argument("--s3-output", help="s3://bucket/prefix the job writes model.tar.gz under")
    sm.add_argument("--job-name", help="default edged-windturbine-<UTC time>")
    sm.add_argument("--max-runtime", type=int, default=3600, help="seconds (default 3600)")
    sm.add_argument("--poll", type=float, default=30.0, help="seconds between status checks")
    sm.add_argument("--endpoint-url", help="AWS endpoint (a local moto server)")
    sm.add_argument("--region", help="AWS region")
    parser.set_defaults(func=_train)


def _options(args: argparse.Namespace):
    from edged_cloud.errors import BadInput
    from edged_cloud.train.fit import FitOptions

    if args.epochs < 1 or args.batch_size < 1 or not args.lr > 0 or args.patience < 0:
        raise BadInput("--epochs and --batch-size must be at least 1, --lr positive, "
                       "--patience 0 or more")
    if not 0 <= args.holdout < 1 or not 0 <= args.dropout < 1:
        raise BadInput("--holdout and --dropout must be in [0, 1)")
    if not 0 < args.quantile <= 1 or not args.margin > 0:
        raise BadInput("--quantile must be in (0, 1] and --margin positive")
    return FitOptions(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                      dropout=args.dropout, patience=args.patience, seed=args.seed,
                      threads=args.threads)


def _train(args: argparse.Namespace) -> int:
    options = _options(args)
    if args.sagemaker:
        from edged_cloud.train.sagemaker import submit

        summary = submit(args, options)
    else:
        from edged_cloud.train.prepare import ThresholdRule
        from edged_cloud.train.run import train

        summary = train(args.data, args.out, options, holdout=args.holdout,
                        version=args.version,
                        threshold_approximation=args.denoise == "reference",
                        threshold_rule=ThresholdRule(args.thresholds, args.quantile,
                                                     args.margin))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    held = summary.get("held_out", {})
    print(f"trained on {summary['data']['trained_on']} decisions, "
          f"{len(summary['history']['train_loss'])} epochs; ONNX vs PyTorch max abs diff "
          f"{summary['onnx_vs_torch_max_abs']:.3g}")
    if held.get("false_alarm_rate") is not None:
        print(f"held out: false alarms {held['false_alarm_rate']:.1%}" + "".join(
            f", {k} detected {v:.1%}" for k, v in held.get("detection_rate", {}).items()))
    print(f"wrote {args.out}")
    return 0
