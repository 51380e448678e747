"""``conveyor bench``: a load generator for any OIP v2 gRPC server, and runners for the
benchmark scripts under ``benchmarks/``.

Modules: :mod:`~conveyor.bench.loadgen` (the one load generator, also used by
``benchmarks/serve_bench.py`` and ``conveyor demo``), :mod:`~conveyor.bench.payloads` (requests
built once from model metadata or a Parquet file), :mod:`~conveyor.bench.stats` (percentiles),
:mod:`~conveyor.bench.prom` (the server's Prometheus metrics), :mod:`~conveyor.bench.report`
(JSON, CSV, PNG), :mod:`~conveyor.bench.command` (the CLI).
"""
