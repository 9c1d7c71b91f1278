"""Sinks: where the recorder's observations and events leave the process.

``scrape`` (the Prometheus scrape model: what a scrape reads from the recorder, rendered),
``prometheus`` (the sink: own registry, /metrics endpoint), ``multiprocess`` (one scrape over
every worker process), ``otel`` (OpenTelemetry metrics and log records; ``_otel_sdk``: the SDK
internals it reads). The per-process readers (watcher, pools, cluster, runtime) reach them
through ``e6observe.readings``. Importing this package imports no exporter; each sink module is
imported by ``instrument()`` when configured.
"""
