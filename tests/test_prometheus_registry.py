"""A shared registry stays valid when others register into it after ``instrument()``."""

from __future__ import annotations

import subprocess
from typing import Iterator

import pytest
from helpers import need_binary
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily

import e6observe

pytestmark = [pytest.mark.timeout(60), pytest.mark.minversions]


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    promtool = need_binary("promtool", install="apt-get install prometheus (./run test does this as root)")
    return subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def reg() -> Iterator[CollectorRegistry]:
    r = CollectorRegistry()
    assert e6observe.instrument(registry=r, otel=False) is not None
    yield r
    e6observe.uninstrument()


def test_a_same_named_metric_registered_later_fails_at_registration(reg: CollectorRegistry) -> None:
    for name in ("process_open_fds", "e6data_strategy_active", "process_threads", "python_gc_collections"):
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            Gauge(name, "a second one", registry=reg)


def test_a_collector_without_describe_registered_later_keeps_the_exposition_valid(
    reg: CollectorRegistry,
) -> None:
    ProcessCollector(registry=reg)  # describes nothing: the registry cannot refuse it
    text = generate_latest(reg).decode()
    res = promtool_check(text)
    assert res.returncode == 0, res.stderr + res.stdout
    assert text.count("# HELP process_resident_memory_bytes") == 1
    assert "process_unique_memory_bytes" in text and "process_threads" in text


def test_prometheus_clients_process_families_in_our_registry(reg: CollectorRegistry) -> None:
    text = generate_latest(reg).decode()
    for name in (
        "process_start_time_seconds",
        "process_max_fds",
        "python_info",
        "process_cpu_seconds_total",
        "python_gc_collections_total",
        "process_unique_memory_bytes",
        "process_threads",
    ):
        assert f"\n{name}" in text, name
    assert promtool_check(text).returncode == 0


def test_an_unrelated_collector_coexists(reg: CollectorRegistry) -> None:
    class App:
        def collect(self) -> Iterator[CounterMetricFamily]:
            yield CounterMetricFamily("app_requests", "Requests.", value=3)

    reg.register(App())
    assert promtool_check(generate_latest(reg).decode()).returncode == 0
