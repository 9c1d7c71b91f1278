"""The prober against the simulator: results, metrics, bounded probes, credentials."""

from __future__ import annotations

import argparse

import pytest
from helpers import PASSWORD, USER
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from e6observe import metrics as M
from e6observe.cli._connopts import ConnectionOptions, Credentials
from e6observe.cli.probe import ProbeCollector, Prober
from e6observe.recorder import Recorder
from e6observe.sim import Simulator

# Python 3.9 and connector 2.3.15 too (the legacy run of ./run test).
pytestmark = pytest.mark.matrix


def opts_for(sim: Simulator, password: str = PASSWORD) -> ConnectionOptions:
    return ConnectionOptions(host=sim.host, port=sim.port, credentials=Credentials(USER, password))


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def count(rec: Recorder, result: str) -> float:
    return rec.family(M.PROBES).counter(result).value


def test_probe_success_reuses_the_connection(sim: Simulator, rec: Recorder) -> None:
    p = Prober(opts_for(sim), rec, interval=1.0)
    try:
        r1, r2 = p.probe_once(), p.probe_once()
    finally:
        p.stop()
    assert r1.ok and r2.ok and p.last_success == 1.0
    assert count(rec, "success") == 2 and count(rec, "failure") == 0
    assert rec.family(M.PROBE_DURATION).histogram().count == 2
    c = sim.counters()
    assert c["sessions"] == 1  # one connection kept, not one per probe
    assert c["queries"] == 2 and c["open_queries"] == 0  # every probe query was cleared


def test_probe_failure_then_recovery(sim: Simulator, rec: Recorder) -> None:
    p = Prober(opts_for(sim), rec, interval=1.0)
    try:
        assert p.probe_once().ok
        sim.inject_fault("prepareStatement", details="engine is sad")
        bad = p.probe_once()
        assert bad.result == "failure" and "engine is sad" in bad.reason
        assert p.last_success == 0.0
        good = p.probe_once()  # reconnects and succeeds
        assert good.ok and p.last_success == 1.0
    finally:
        p.stop()
    assert count(rec, "success") == 2 and count(rec, "failure") == 1
    assert sim.counters()["sessions"] == 2  # the failed probe dropped its connection


def test_hung_cluster_is_a_timeout_not_a_hang(sim: Simulator, rec: Recorder) -> None:
    sim.set_latency(5000, method="prepareStatement")
    p = Prober(opts_for(sim), rec, interval=1.0, timeout=0.3)
    try:
        res = p.probe_once()
    finally:
        p.stop()
    assert res.result == "timeout" and res.reason == "no answer: timed out after 0.3 s"
    assert count(rec, "timeout") == 1 and p.last_success == 0.0


def test_stopped_cluster_is_a_failure(sim: Simulator, rec: Recorder) -> None:
    sim.stop()
    p = Prober(opts_for(sim), rec, interval=1.0, timeout=5.0)
    try:
        res = p.probe_once()
    finally:
        p.stop()
    assert res.result == "failure"
    assert count(rec, "failure") == 1


def test_refused_login_reason_has_no_password(rec: Recorder) -> None:
    with Simulator(port=0, users={USER: PASSWORD}) as strict:
        p = Prober(opts_for(strict, password="wrong-" + PASSWORD), rec, interval=1.0)
        try:
            res = p.probe_once()
        finally:
            p.stop()
    assert res.result == "failure"
    assert PASSWORD not in res.reason


def test_collector_exports_the_probe_series(sim: Simulator, rec: Recorder) -> None:
    p = Prober(opts_for(sim), rec, interval=1.0)
    reg = CollectorRegistry()
    reg.register(ProbeCollector(p))
    before = samples(reg)
    # before the first probe: counters at zero for every result, no success value yet
    assert before[("e6data_probes_total", (("result", "timeout"),))] == 0
    assert not any(k[0] == "e6data_probe_success" for k in before)
    try:
        p.probe_once()
    finally:
        p.stop()
    after = samples(reg)
    assert after[("e6data_probe_success", ())] == 1.0
    assert after[("e6data_probes_total", (("result", "success"),))] == 1
    assert after[("e6data_probe_duration_seconds_count", ())] == 1
    assert after[("e6data_probe_duration_seconds_bucket", (("le", "+Inf"),))] == 1
    for spec in (M.PROBE_SUCCESS, M.PROBE_DURATION, M.PROBES):  # names from the metric table
        assert any(name in {k[0] for k in after} for name in spec.exposed_names)


def test_background_probing_runs_on_the_interval(sim: Simulator, rec: Recorder) -> None:
    import time

    p = Prober(opts_for(sim), rec, interval=0.1).start()
    try:
        deadline = time.monotonic() + 20
        while p.probes < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        p.stop()
    assert p.probes >= 3 and count(rec, "success") == p.probes


def test_probe_arguments_refuse_bad_values() -> None:
    from e6observe import cli

    parser = cli.build_parser()
    for bad in (["--interval", "0"], ["--interval", "nan"], ["--metrics-port", "70000"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["probe", "--host", "h", *bad])
    args = parser.parse_args(["probe", "--host", "h", "--port", "50051", "--interval", "2"])
    assert isinstance(args, argparse.Namespace) and args.interval == 2.0
    assert args.metrics_addr == "127.0.0.1"  # loopback unless told otherwise


def test_probe_success_is_exported_to_opentelemetry(sim: Simulator, rec: Recorder) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from e6observe.cli.probe import register_otel

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    p = Prober(opts_for(sim), rec, interval=1.0)
    register_otel(p, provider.get_meter("test"))

    def points() -> list[float]:
        data = reader.get_metrics_data()
        return [
            dp.value
            for rm in (data.resource_metrics if data else [])
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == M.PROBE_SUCCESS.otel_name
            for dp in m.data.data_points
        ]

    assert points() == []  # no value before the first probe
    try:
        p.probe_once()
        assert points() == [1.0]
        sim.stop()  # the cluster goes away: the next probe fails
        p.probe_once()
        assert points() == [0.0]
    finally:
        p.stop()
    provider.shutdown()
