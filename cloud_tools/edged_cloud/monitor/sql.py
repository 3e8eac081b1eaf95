"""The report's SQL and the table definitions for Athena and Spark.

The report reads two tables: ``sketches`` (every record of the lake, read with the sketch
columns: any record kind has ``device``, ``time``, ``model_version``) and ``decisions``
(the same objects read with the decision columns). DuckDB defines both as views over
``read_json(...)`` (``edged_cloud.monitor.lake``); Athena and Spark get them from
``edged-cloud monitor ddl``. The queries in ``SHARED`` are written in the SQL the three
engines share (no quoted identifiers, no list functions, ``row_number()`` for the
dedupe, ``date`` compared as a string), so they run there unchanged with their two
placeholders filled in: ``{since}`` (Unix seconds) and ``{since_date}`` (YYYY-MM-DD).
What stays in Python: summing the sketches' histogram arrays per device (a list sum has
no common SQL) and the decision-window sample for the KS test (``window`` is a reserved
word that each engine quotes its own way).
"""

from __future__ import annotations

#: The newest record per sketch key (a partial hour flushed early is superseded by a later
#: record of the same key): the rows every other sketch query starts from.
LATEST_SKETCHES = """\
SELECT device, pipeline, model_name, model_version, period_start, time, final,
       turbines, decisions, anomalous, stale_s, features, input_edges, input_counts,
       error_edges, error_counts, thresholds
FROM (
  SELECT s.*, row_number() OVER (PARTITION BY device, key ORDER BY time DESC) AS rn
  FROM sketches s
  WHERE kind = 'sketch' AND date >= '{since_date}' AND period_start >= {since}
) ranked
WHERE rn = 1"""

#: Decisions and anomalous decisions per device, model version and hour.
HOURLY = f"""\
SELECT device, model_version, period_start,
       sum(decisions) AS decisions, sum(anomalous) AS anomalous
FROM (
{LATEST_SKETCHES}
) latest
GROUP BY device, model_version, period_start
ORDER BY device, period_start"""

#: The newest record of any kind per device: when it was last heard from through the lake.
LAST_SEEN = """\
SELECT device, max(time) AS last_seen
FROM sketches
WHERE date >= '{since_date}' AND time >= {since}
GROUP BY device"""

#: Model versions each device wrote records for, and when last: the newest is the one it
#: runs; several in the last hour mean it switched (a rollout reaching it).
VERSIONS = """\
SELECT device, model_version, max(time) AS last_time, count(*) AS records
FROM sketches
WHERE date >= '{since_date}' AND time >= {since} AND model_version IS NOT NULL
GROUP BY device, model_version"""

SHARED = {"latest_sketches": LATEST_SKETCHES, "hourly": HOURLY, "last_seen": LAST_SEEN,
          "versions": VERSIONS}

#: (column, Hive type) of a sketch record (docs/monitoring.md's contract).
SKETCH_COLUMNS = (
    ("schema", "int"), ("kind", "string"), ("id", "string"), ("key", "string"),
    ("device_id", "string"), ("pipeline", "string"), ("model_name", "string"),
    ("model_version", "bigint"), ("bundle_sha256", "string"), ("time", "double"),
    ("period_start", "double"), ("period_end", "double"), ("final", "boolean"),
    ("turbines", "int"), ("decisions", "bigint"), ("anomalous", "bigint"),
    ("groups", "map<string,bigint>"), ("stale_s", "double"), ("features", "array<string>"),
    ("input_edges", "array<double>"), ("input_counts", "array<array<bigint>>"),
    ("error_edges", "array<double>"), ("error_counts", "array<array<bigint>>"),
    ("thresholds", "array<double>"),
)
#: (column, Hive type) of a decision record (docs/capture.md, "Pipeline decisions"); the
#: heavy optional fields (raw rows, model input and output) are left out.
DECISION_COLUMNS = (
    ("schema", "int"), ("kind", "string"), ("id", "string"), ("key", "string"),
    ("pipeline", "string"), ("device_id", "string"), ("turbine", "string"),
    ("model_name", "string"), ("model_version", "bigint"), ("bundle_sha256", "string"),
    ("time", "double"), ("boot_id", "string"), ("seq", "bigint"), ("rows", "bigint"),
    ("reasons", "array<string>"), ("anomalous", "boolean"), ("primary", "string"),
    ("features", "array<string>"), ("values", "array<double>"),
    ("thresholds", "array<double>"), ("flags", "array<boolean>"),
    ("window", "array<array<double>>"),
)
TABLES = {"sketches": SKETCH_COLUMNS, "decisions": DECISION_COLUMNS}
#: The lake's Hive partitions (docs/capture.md, "The object layout"), with their types.
PARTITIONS = (("device", "string"), ("model", "string"), ("version", "int"),
              ("date", "string"), ("hour", "int"))

_DUCK_TYPES = {"int": "INTEGER", "bigint": "BIGINT", "string": "VARCHAR", "double": "DOUBLE",
               "boolean": "BOOLEAN"}


def duckdb_type(hive: str) -> str:
    """A Hive column type as DuckDB's ``read_json(columns=...)`` spells it."""
    if hive.startswith("array<"):
        return duckdb_type(hive[6:-1]) + "[]"
    if hive.startswith("map<"):
        key, value = hive[4:-1].split(",")
        return f"MAP({duckdb_type(key)}, {duckdb_type(value)})"
    return _DUCK_TYPES[hive]


def _columns(columns) -> str:
    return ",\n".join(f"  `{name}` {kind}" for name, kind in columns)


def athena_ddl(location: str, *, devices: list[str] | None = None,
               models: list[str] | None = None, first_date: str = "2024-01-01") -> str:
    """CREATE EXTERNAL TABLE for both tables with partition projection: no partitions to
    load, new devices and hours readable at once. device and model are ``injected`` (a
    query must name them in its WHERE) unless ``devices``/``models`` list them (``enum``:
    the fleet-wide SHARED queries then run unchanged)."""
    location = location.rstrip("/") + "/"
    projection = [("projection.enabled", "true")]
    for name, values in (("device", devices), ("model", models)):
        if values:
            projection += [(f"projection.{name}.type", "enum"),
                           (f"projection.{name}.values", ",".join(values))]
        else:
            projection += [(f"projection.{name}.type", "injected")]
    projection += [
        ("projection.version.type", "integer"), ("projection.version.range", "1,100"),
        ("projection.date.type", "date"), ("projection.date.format", "yyyy-MM-dd"),
        ("projection.date.range", f"{first_date},NOW"),
        ("projection.date.interval", "1"), ("projection.date.interval.unit", "DAYS"),
        ("projection.hour.type", "integer"), ("projection.hour.range", "0,23"),
        ("projection.hour.digits", "2"),
        ("storage.location.template",
         location + "device=${device}/model=${model}/version=${version}/"
                    "date=${date}/hour=${hour}/"),
    ]
    props = ",\n".join(f"  '{k}' = '{v}'" for k, v in projection)
    parts = ",\n".join(f"  `{name}` {kind}" for name, kind in PARTITIONS)
    out = []
    for table, columns in TABLES.items():
        out.append(
            f"CREATE EXTERNAL TABLE IF NOT EXISTS {table} (\n{_columns(columns)}\n)\n"
            f"PARTITIONED BY (\n{parts}\n)\n"
            "ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'\n"
            "WITH SERDEPROPERTIES ('ignore.malformed.json' = 'true')\n"
            f"LOCATION '{location}'\n"
            f"TBLPROPERTIES (\n{props}\n);\n")
    return "\n".join(out)


def spark_ddl(location: str) -> str:
    """CREATE TABLE ... USING json for both tables (gzip read by its extension); Spark has
    no partition projection, so each is followed by the statement that finds new
    partitions (run it before each report, or after each upload window)."""
    location = location.rstrip("/") + "/"
    out = []
    for table, columns in TABLES.items():
        cols = _columns(list(columns) + list(PARTITIONS))
        names = ", ".join(f"`{name}`" for name, _ in PARTITIONS)
        out.append(
            f"CREATE TABLE IF NOT EXISTS {table} (\n{cols}\n)\nUSING json\n"
            f"OPTIONS ('pathGlobFilter' = '*.jsonl.gz')\n"
            f"PARTITIONED BY ({names})\nLOCATION '{location}';\n"
            f"ALTER TABLE {table} RECOVER PARTITIONS;\n")
    return "\n".join(out)


def queries_text() -> str:
    """The SHARED queries as one SQL file, each under a comment naming it."""
    return "\n\n".join(f"-- {name}\n{sql};" for name, sql in SHARED.items()) + "\n"
