"""``edged-cloud deploy`` and ``edged-cloud rollout status|cancel``: an IoT job that rolls a
published bundle out to things or a thing group, and how it goes (``edged_cloud.rollout``)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    from edged_cloud.aws import add_options

    deploy = subparsers.add_parser(
        "deploy", help="roll a published bundle out as an AWS IoT job",
        description="Create an AWS IoT job that deploys the bundle at --bundle-url to the "
                    "things or the thing group: the edged.deploy-model document with a "
                    "pre-signed URL placeholder (IoT signs it with --presign-role), an "
                    "exponential rollout, abort criteria, an in-progress timeout and retries.")
    where = deploy.add_argument_group("the bundle")
    where.add_argument("--bundle-url", metavar="s3://BUCKET/KEY",
                       help="the published bundle (or --bucket and --key)")
    where.add_argument("--bucket")
    where.add_argument("--key")
    where.add_argument("--sha256", help="the bundle's SHA-256, checked against the object")
    deploy.add_argument("--model", default="windturbine",
                        help="the model name in the bundle's manifest (default windturbine)")
    deploy.add_argument("--version", type=int, required=True,
                        help="the model version in the bundle's manifest")
    targets = deploy.add_mutually_exclusive_group(required=True)
    targets.add_argument("--things", metavar="T1,T2", help="things, by name")
    targets.add_argument("--thing-group", metavar="GROUP", help="a thing group, by name")
    deploy.add_argument("--continuous", action="store_true",
                        help="things added to the group later get the job too "
                             "(CONTINUOUS; default: the group as it is now, SNAPSHOT)")
    deploy.add_argument("--job-id", help="the job's id (default: MODEL-vN-<UTC time>)")
    deploy.add_argument("--presign-role", required=True, metavar="ROLE",
                        help="the IAM role (name or ARN) AWS IoT signs the bundle URL with")
    deploy.add_argument("--url-expires-s", type=int, default=3600,
                        help="how long a signed URL lives, 60-3600 s (default 3600)")
    options = deploy.add_argument_group("on the device")
    options.add_argument("--shadow-decisions", type=int, default=0,
                         help="run the new model beside the live one for N decisions first")
    options.add_argument("--no-activate", dest="activate", action="store_false",
                         help="install the model but leave the live one serving")
    options.add_argument("--allow-http", action="store_true",
                         help="let devices fetch over http:// (labs and local tests only)")
    rate = deploy.add_argument_group("rollout, abort, timeout, retries")
    rate.add_argument("--base-rate", type=int, default=10,
                      help="things notified per minute at first, 1-1000 (default 10)")
    rate.add_argument("--increment-factor", type=float, default=2.0,
                      help="the rate's multiplier, 1.1-5 (default 2)")
    increase = rate.add_mutually_exclusive_group()
    increase.add_argument("--increase-after-succeeded", type=int, metavar="N",
                          help="raise the rate after N more things succeeded (default 10)")
    increase.add_argument("--increase-after-notified", type=int, metavar="N",
                          help="raise the rate after N more things were notified")
    rate.add_argument("--max-rate", type=int, help="at most this many things a minute")
    rate.add_argument("--abort-on", default="FAILED,REJECTED",
                      help="failure types that count toward aborting, each on its own: "
                           "FAILED, REJECTED, TIMED_OUT, ALL (default FAILED,REJECTED)")
    rate.add_argument("--abort-threshold", type=float, default=10.0, metavar="PERCENT",
                      help="cancel the job when this share of executions failed so "
                           "(default 10)")
    rate.add_argument("--abort-min-executed", type=int, default=10, metavar="N",
                      help="... once at least N executions have ended (default 10)")
    rate.add_argument("--in-progress-timeout", type=int, default=60, metavar="MINUTES",
                      help="an execution IN_PROGRESS this long is TIMED_OUT (default 60)")
    rate.add_argument("--retries-failed", type=int, default=2,
                      help="retries of a FAILED execution (default 2)")
    rate.add_argument("--retries-timed-out", type=int, default=1,
                      help="retries of a TIMED_OUT execution (default 1)")
    deploy.add_argument("--json", action="store_true", help="print the result as JSON")
    add_options(deploy)
    deploy.set_defaults(func=_deploy)

    rollout = subparsers.add_parser("rollout", help="how a rollout goes; cancel one",
                                    description="Read or cancel an IoT job made by deploy.")
    sub = rollout.add_subparsers(dest="action", metavar="ACTION", required=True)
    state = sub.add_parser("status", help="every device's state and reason",
                           description="Each execution of the job: the thing, its status "
                                       "and what the device reported (reason, phase).")
    state.add_argument("job", metavar="JOB")
    state.add_argument("--json", action="store_true", help="print the result as JSON")
    add_options(state)
    state.set_defaults(func=_status)
    stop = sub.add_parser("cancel", help="cancel a rollout",
                          description="Cancel the job: queued executions are canceled; "
                                      "with --force the ones in progress too.")
    stop.add_argument("job", metavar="JOB")
    stop.add_argument("--force", action="store_true",
                      help="cancel executions in progress too")
    stop.add_argument("--comment", help="why, kept with the job")
    stop.add_argument("--json", action="store_true", help="print the result as JSON")
    add_options(stop)
    stop.set_defaults(func=_cancel)


def _deploy(args: argparse.Namespace) -> int:
    from edged_cloud import rollout
    from edged_cloud.aws import client
    from edged_cloud.errors import BadInput

    if args.bundle_url:
        if args.bucket or args.key:
            raise BadInput("give --bundle-url or --bucket and --key, not both")
        bucket, key = rollout.parse_s3_url(args.bundle_url)
    elif args.bucket and args.key:
        bucket, key = args.bucket, args.key
    else:
        raise BadInput("where is the bundle? --bundle-url s3://BUCKET/KEY, or --bucket "
                       "and --key")
    settings = rollout.RolloutSettings(
        base_rate_per_minute=args.base_rate, increment_factor=args.increment_factor,
        increase_after_notified=args.increase_after_notified,
        increase_after_succeeded=(args.increase_after_succeeded if
                                  args.increase_after_succeeded is not None or
                                  args.increase_after_notified is not None else 10),
        maximum_per_minute=args.max_rate,
        abort_on=tuple(t.strip().upper() for t in args.abort_on.split(",") if t.strip()),
        abort_threshold_percent=args.abort_threshold,
        abort_min_executed=args.abort_min_executed,
        in_progress_timeout_minutes=args.in_progress_timeout,
        retries_failed=args.retries_failed, retries_timed_out=args.retries_timed_out)
    settings.check()  # before any AWS call: a typo costs nothing
    iot = client("iot", args)
    s3 = client("s3", args)
    if args.things:
        names = [t.strip() for t in args.things.split(",") if t.strip()]
        if not names:
            raise BadInput("--things names no thing")
        targets = rollout.thing_arns(iot, names)
    else:
        targets = [rollout.group_arn(iot, args.thing_group)]
    role = rollout.role_arn(client("iam", args), args.presign_role)
    bundle = rollout.bundle_in_s3(s3, bucket, key, args.sha256)
    document = rollout.job_document(bundle, iot.meta.region_name, args.model, args.version,
                                    activate=args.activate,
                                    shadow_decisions=args.shadow_decisions,
                                    allow_http=args.allow_http)
    deployment = rollout.Deployment(
        job_id=args.job_id or rollout.default_job_id(args.model, args.version),
        targets=targets, document=document, role_arn=role, expires_s=args.url_expires_s,
        settings=settings, continuous=args.continuous)
    created = rollout.create(iot, deployment)
    if args.json:
        print(json.dumps(created, indent=2))
    else:
        print(f"job {created['job']}: {args.model} v{args.version} to "
              f"{len(targets)} target(s); follow it with: edged-cloud rollout status "
              f"{created['job']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from edged_cloud import rollout
    from edged_cloud.aws import client

    report = rollout.status(client("iot", args), args.job)
    print(json.dumps(report, indent=2) if args.json else rollout.table(report))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from edged_cloud import rollout
    from edged_cloud.aws import client

    result = rollout.cancel(client("iot", args), args.job, force=args.force,
                            comment=args.comment)
    print(json.dumps(result) if args.json else f"job {args.job}: canceled")
    return 0
