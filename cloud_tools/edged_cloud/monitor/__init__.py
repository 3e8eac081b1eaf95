"""``edged-cloud monitor``: how each deployed model is doing, read from the capture lake.

- ``stats``: PSI and the two-sample KS test, the expected input distribution of a training
  output (what ``edged-cloud package`` writes as the manifest's ``monitoring``);
- ``sql``: the queries the report runs, in SQL that DuckDB, Athena and Spark all take, and
  the Athena/Spark table definitions (``edged-cloud monitor ddl``);
- ``lake``: DuckDB over the lake where it lies (a folder or ``s3://``), no ETL;
- ``report``: the per-device verdicts (``--json``, the terminal table);
- ``html``: the self-contained HTML report with its plots;
- ``synth``: sketch records as devices write them (docs/monitoring contract), for tests
  and the benchmark.
"""
