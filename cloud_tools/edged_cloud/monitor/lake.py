"""The capture lake through DuckDB, where it lies: a local folder or ``s3://bucket/prefix``.

No ETL: ``sketches`` and ``decisions`` are views over ``read_json`` of every
``**/*.jsonl.gz`` object with Hive partitioning (the partition columns typed as Athena's
DDL types them, so the SHARED queries compare alike). S3 goes through DuckDB's httpfs
extension, loaded from the ``duckdb-extension-httpfs`` package (DuckDB cannot download
extensions at run time here; ``INSTALL httpfs`` is never run).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from edged_cloud.errors import BadInput, CloudToolError, NotFound
from edged_cloud.monitor import sql

_HIVE_TYPES = "{'device': VARCHAR, 'model': VARCHAR, 'version': VARCHAR, 'date': VARCHAR, " \
              "'hour': INTEGER}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def load_httpfs(con) -> None:
    """Load httpfs from the installed extension package (its file matches the DuckDB
    version the package pins)."""
    import duckdb

    try:
        import duckdb_extension_httpfs
    except ImportError:
        raise CloudToolError("reading s3:// needs the duckdb-extension-httpfs package "
                             "(pip install duckdb-extension-httpfs)") from None
    base = Path(duckdb_extension_httpfs.__file__).parent / "extensions"
    path = base / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    if not path.is_file():
        found = sorted(p.parent.name for p in base.glob("*/httpfs.duckdb_extension"))
        raise CloudToolError(f"duckdb-extension-httpfs has httpfs for {found}, DuckDB is "
                             f"{duckdb.__version__}: install matching versions")
    con.execute(f"LOAD {_quote(str(path))}")


def configure_s3(con, endpoint_url: str | None, region: str | None) -> None:
    """Credentials from boto3's chain (environment, profile, instance role); a custom
    endpoint (moto, MinIO) path-style, TLS as its scheme says."""
    import boto3

    session = boto3.Session(region_name=region)
    creds = session.get_credentials()
    settings = {"s3_region": session.region_name or "us-east-1"}
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        settings["s3_access_key_id"] = frozen.access_key
        settings["s3_secret_access_key"] = frozen.secret_key
        if frozen.token:
            settings["s3_session_token"] = frozen.token
    if endpoint_url:
        parts = urlsplit(endpoint_url)
        settings.update(s3_endpoint=parts.netloc, s3_url_style="path",
                        s3_use_ssl="true" if parts.scheme == "https" else "false")
    for name, value in settings.items():
        con.execute(f"SET {name} = {_quote(value)}")


class Lake:
    """One DuckDB connection with the lake's two views."""

    def __init__(self, location: str, *, endpoint_url: str | None = None,
                 region: str | None = None, threads: int | None = None) -> None:
        import duckdb

        self.location = location.rstrip("/")
        self.con = duckdb.connect()
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if self.location.startswith("s3://"):
            load_httpfs(self.con)
            configure_s3(self.con, endpoint_url, region)
        elif "://" in self.location:
            raise BadInput(f"{location}: a lake is a local folder or s3://bucket/prefix")
        elif not Path(self.location).is_dir():
            raise NotFound(f"{location}: no such folder")
        pattern = _quote(self.location + "/**/*.jsonl.gz")
        for table, columns in sql.TABLES.items():
            cols = ", ".join(f"{_quote(name)}: {_quote(sql.duckdb_type(kind))}"
                             for name, kind in columns)
            self.con.execute(
                f"CREATE VIEW {table} AS SELECT * FROM read_json({pattern}, "
                f"format = 'newline_delimited', hive_partitioning = true, "
                f"union_by_name = true, hive_types = {_HIVE_TYPES}, "
                f"columns = {{{cols}}})")

    def query(self, text: str, **params) -> list[tuple]:
        import duckdb

        try:
            return self.con.execute(text.format(**params)).fetchall()
        except duckdb.IOException as exc:
            if "No files found" in str(exc):
                return []
            raise CloudToolError(f"{self.location}: cannot read the lake: {exc}") from None
        except duckdb.Error as exc:
            raise BadInput(f"{self.location}: {type(exc).__name__}: {exc}") from None

    def shared(self, name: str, **params) -> list[tuple]:
        return self.query(sql.SHARED[name], **params)

    def windows(self, since: float, since_date: str, per_device: int = 50) -> list[tuple]:
        """Up to ``per_device`` newest sampled decision windows per device and version
        (DuckDB only: ``window`` is quoted its own way on each engine)."""
        return self.query(
            """SELECT device, model_version, "window" FROM (
                 SELECT device, model_version, "window", row_number() OVER
                   (PARTITION BY device, model_version ORDER BY time DESC) AS rn
                 FROM decisions WHERE kind = 'decision' AND "window" IS NOT NULL
                   AND date >= '{since_date}' AND time >= {since}) t
               WHERE rn <= {per_device}""",
            since=since, since_date=since_date, per_device=int(per_device))

    def heartbeats(self, location: str, since: float) -> list[tuple]:
        """The newest heartbeat time per device from heartbeat reports (docs/health.md),
        JSON lines or JSON files, gzip'ed or not, under ``location``."""
        base = location.rstrip("/")
        if not base.startswith("s3://") and Path(base).is_file():
            pattern = _quote(base)
        else:
            pattern = _quote(base + "/**/*.json*")  # .json, .jsonl, either .gz
        return self.query(
            f"SELECT device, max(time) FROM read_json({pattern}, union_by_name = true, "
            "columns = {{'device': 'VARCHAR', 'time': 'DOUBLE'}}) "
            "WHERE time >= {since} AND device IS NOT NULL GROUP BY device", since=since)
