"""Reading what a capture destination wrote: a folder of ``*.jsonl.gz`` objects (the Disk
destination, or S3 objects saved to disk) holds decisions, agent captures and hourly
sketches side by side; a test asks for the kind it checks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def records(root: Path, kind: str | None = "decision") -> list[dict]:
    """Every record under ``root`` of ``kind`` (every record with None), objects in key
    order, records in object order."""
    found = []
    for path in sorted(Path(root).rglob("*.jsonl.gz")):
        found += [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    return [r for r in found if kind is None or r.get("kind") == kind]
