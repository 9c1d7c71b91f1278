"""Sinks: where the recorder's observations and events leave the process.

``prometheus`` (collector, own registry, /metrics endpoint), ``multiprocess`` (one scrape over
every worker process), ``otel`` (OpenTelemetry metrics, log records, spans). Importing this
package imports no exporter; each sink module is imported by ``instrument()`` when configured.
"""
