"""The fleet's captures -> the prepared form: each decision record's buffer is one
segment with one decision (docs/capture.md, "Pipeline decisions").

A record carries its buffer as ``window`` (the device's row features, with
``include_window``) or ``raw_rows`` (the raw inputs, with ``include_rows``), from which the
features are computed by the device's code. Objects are read as untrusted: each bounded
(compressed and inflated size, line length, nesting), and a record that is not usable is
skipped and counted by reason, never a crash.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edged.base import strict_json
from edged.capture.segments import parse_key
from edged.windturbine.layout import FAULT_KINDS, FEATURES, INPUTS
from edged_cloud.data.dataset import ANOMALOUS, BUFFER, HEALTHY, Dataset, Segment, build
from edged_cloud.errors import BadInput, NotFound

MAX_OBJECT_BYTES = 64 << 20  # one gzip object, compressed
MAX_INFLATED_BYTES = 512 << 20  # ... and inflated
MAX_LINE_BYTES = 4 << 20  # a record with a 500-row window, rows and model I/O is ~300 kB
MAX_DEPTH = 6
MAX_OBJECTS = 1_000_000


def _inflate(body: bytes, where: str) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing
    try:
        data = inflater.decompress(body, MAX_INFLATED_BYTES + 1)
    except zlib.error as exc:
        raise BadInput(f"{where}: not gzip ({exc})") from None
    if len(data) > MAX_INFLATED_BYTES:
        raise BadInput(f"{where}: inflates to more than {MAX_INFLATED_BYTES} bytes")
    return data


def _local(root: Path) -> Iterator[tuple[str, bytes]]:
    if not root.is_dir():
        raise NotFound(f"{root}: no such folder")
    for count, path in enumerate(sorted(root.rglob("*.jsonl.gz")), start=1):
        if count > MAX_OBJECTS:
            raise BadInput(f"{root}: more than {MAX_OBJECTS} objects")
        if path.stat().st_size > MAX_OBJECT_BYTES:
            raise BadInput(f"{path}: over {MAX_OBJECT_BYTES} bytes")
        yield path.relative_to(root).as_posix(), path.read_bytes()


def _s3(url: str, endpoint_url: str | None, region: str | None
        ) -> Iterator[tuple[str, bytes]]:
    import boto3
    from botocore.exceptions import ClientError

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    try:
        count = 0
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"]
                if not key.endswith(".jsonl.gz"):
                    continue
                count += 1
                if count > MAX_OBJECTS:
                    raise BadInput(f"{url}: more than {MAX_OBJECTS} objects")
                if item["Size"] > MAX_OBJECT_BYTES:
                    raise BadInput(f"s3://{bucket}/{key}: over {MAX_OBJECT_BYTES} bytes")
                body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                yield key[len(prefix):].lstrip("/"), body
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "404"):
            raise NotFound(f"bucket {bucket} does not exist") from None
        raise BadInput(f"{url}: {code or exc}") from None


def _features(record: dict) -> np.ndarray | None:
    """The record's buffer as (rows, 6) features, or None when it carries none usable."""
    window = record.get("window")
    if isinstance(window, list) and window:
        features = np.asarray(window, dtype=np.float64)
        if features.ndim == 2 and features.shape[1] == len(FEATURES):
            return features
        return None
    rows, names = record.get("raw_rows"), record.get("raw_inputs")
    if isinstance(rows, list) and rows and isinstance(names, list) \
            and set(INPUTS) <= set(names):
        from edged_cloud.data.dataset import features_of

        raw = np.asarray(rows, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(names):
            return None
        return features_of(raw[:, [names.index(n) for n in INPUTS]])
    return None


def _label(record: dict) -> str:
    if not record.get("anomalous"):
        return HEALTHY
    primary = record.get("primary")
    return primary if primary in FAULT_KINDS else ANOMALOUS


def from_captures(source: str | Path, *, anomalies: str = "exclude", model: str | None = None,
                  endpoint_url: str | None = None, region: str | None = None) -> Dataset:
    """Decision records under ``source`` (a folder or s3://bucket/prefix) as a dataset."""
    text = str(source)
    objects = _s3(text, endpoint_url, region) if text.startswith("s3://") \
        else _local(Path(text))
    skipped: Counter[str] = Counter()
    segments = []
    seen: set[str] = set()
    for key, body in objects:
        try:
            parse_key(key)
        except ValueError:
            skipped["not_a_capture_key"] += 1
            continue
        for line in _inflate(body, key).splitlines():
            if len(line) > MAX_LINE_BYTES:
                skipped["too_large"] += 1
                continue
            try:
                record = strict_json.loads(line, max_bytes=MAX_LINE_BYTES, max_depth=MAX_DEPTH)
            except strict_json.JsonError:
                skipped["not_json"] += 1
                continue
            reason = _use(record, anomalies, model, seen)
            if reason:
                skipped[reason] += 1
                continue
            try:
                features = _features(record)
            except (TypeError, ValueError):
                features = None
            if features is None or len(features) < BUFFER or not np.all(np.isfinite(features)):
                skipped["no_buffer"] += 1
                continue
            label = _label(record)
            segments.append(Segment(str(record.get("turbine")), features[-BUFFER:],
                                    np.full(BUFFER, label)))
    if not segments:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none found"
        raise BadInput(f"{source}: no usable decision records ({counts}); a record needs "
                       f"its buffer: capture with include_window or include_rows")
    return build(segments, source="captures", ends_per_segment="last", captures=text,
                 anomalies=anomalies, skipped=dict(skipped))


def _use(record: object, anomalies: str, model: str | None, seen: set[str]) -> str | None:
    """Why the record is left out, or None to use it."""
    if not isinstance(record, dict) or record.get("kind") != "decision":
        return "not_a_decision"
    if model is not None and record.get("model_name") != model:
        return "other_model"
    if record.get("anomalous") and anomalies == "exclude":
        return "anomalous"
    key = f"{record.get('device_id')}:{record.get('pipeline')}:{record.get('key')}"
    if key in seen:  # one decision captured twice (docs/capture.md: dedupe on key)
        return "duplicate"
    seen.add(key)
    return None
