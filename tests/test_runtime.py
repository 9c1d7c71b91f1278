"""Runtime stats (e6observe.runtime): psutil, smaps_rollup and gc read at collection time."""

from __future__ import annotations

import gc
import os
import sys
import threading
from typing import Any

import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from e6observe import _safe
from e6observe import metrics as M
from e6observe.runtime import (
    ProcessReader,
    ProcessStats,
    RuntimeCollector,
    register_otel,
    uss_from_smaps_rollup,
)

RUNTIME_SPECS = (
    M.PROCESS_RSS,
    M.PROCESS_VMS,
    M.PROCESS_USS,
    M.PROCESS_CPU,
    M.PROCESS_FDS,
    M.PROCESS_THREADS,
    M.GC_COLLECTIONS,
    M.GC_COLLECTED,
    M.GC_UNCOLLECTABLE,
)
HAS_ROLLUP = os.path.exists("/proc/self/smaps_rollup")


def scrape(collector: Any) -> dict[str, list[Any]]:
    reg = CollectorRegistry()
    reg.register(collector)
    text = generate_latest(reg).decode()
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_smaps_rollup_parsing_sums_private_pages(tmp_path: Any) -> None:
    f = tmp_path / "smaps_rollup"
    f.write_text(
        "Rss:  1688 kB\nShared_Clean: 1540 kB\nPrivate_Clean: 36 kB\n"
        "Private_Dirty: 112 kB\nPrivate_Hugetlb: 2 kB\nSwap: 0 kB\n"
    )
    assert uss_from_smaps_rollup(str(f)) == (36 + 112 + 2) * 1024


def test_smaps_rollup_unreadable_or_foreign_gives_none(tmp_path: Any) -> None:
    assert uss_from_smaps_rollup(str(tmp_path / "missing")) is None
    junk = tmp_path / "junk"
    junk.write_text("Rss: lots\nPrivate_Dirty: many kB\n")
    assert uss_from_smaps_rollup(str(junk)) is None


@pytest.mark.matrix
@pytest.mark.skipif(not HAS_ROLLUP, reason="needs Linux 4.14+ /proc/self/smaps_rollup")
def test_rollup_uss_agrees_with_psutil() -> None:
    rollup = ProcessReader(uss_source="rollup").read().uss
    full = psutil.Process().memory_full_info().uss
    assert rollup is not None and rollup > 0
    # Two reads a moment apart of the same kernel figures: within a few percent.
    assert abs(rollup - full) <= 0.05 * full


@pytest.mark.matrix
def test_missing_rollup_falls_back_to_psutil(tmp_path: Any) -> None:
    rd = ProcessReader(uss_source="auto", rollup_path=str(tmp_path / "absent"))
    uss = rd.read().uss
    assert uss is not None and uss > 0
    assert ProcessReader(uss_source="off").read().uss is None
    with pytest.raises(ValueError, match="uss_source"):
        ProcessReader(uss_source="smaps")


@pytest.mark.matrix
def test_collector_exposes_process_collector_names_with_sane_values() -> None:
    samples = scrape(RuntimeCollector())
    expected = set().union(*(s.exposed_names for s in RUNTIME_SPECS))
    assert expected <= set(samples)
    me = psutil.Process()
    assert samples["process_resident_memory_bytes"][0].value > 1 << 20
    assert (
        samples["process_virtual_memory_bytes"][0].value >= samples["process_resident_memory_bytes"][0].value
    )
    assert samples["process_threads"][0].value == pytest.approx(me.num_threads(), abs=2)
    assert samples["process_open_fds"][0].value == pytest.approx(me.num_fds(), abs=3)
    gens = {s.labels["generation"] for s in samples["python_gc_collections_total"]}
    assert gens == {str(i) for i in range(len(gc.get_stats()))}


def test_values_are_read_at_collection_time() -> None:
    col = RuntimeCollector()

    def gen2() -> float:
        return next(
            s.value for s in scrape(col)["python_gc_collections_total"] if s.labels["generation"] == "2"
        )

    before = gen2()
    gc.collect()
    gc.collect()
    assert gen2() >= before + 2
    threads_before = scrape(col)["process_threads"][0].value
    stop = threading.Event()
    extra = [threading.Thread(target=stop.wait, daemon=True) for _ in range(3)]
    for t in extra:
        t.start()
    try:
        assert scrape(col)["process_threads"][0].value >= threads_before + 3
    finally:
        stop.set()
        for t in extra:
            t.join()


def test_names_and_types_match_prometheus_clients_process_and_gc_collectors() -> None:
    # Dashboards written for prometheus_client's collectors work unchanged; it also means the two
    # must never share a registry (e6observe uses its own).
    from prometheus_client import GCCollector, ProcessCollector

    theirs = CollectorRegistry()
    ProcessCollector(registry=theirs)
    GCCollector(registry=theirs)
    ours = CollectorRegistry()
    ours.register(RuntimeCollector())
    their_types = {f.name: f.type for f in theirs.collect()}
    our_types = {f.name: f.type for f in ours.collect()}
    shared = set(their_types) & set(our_types)
    assert {
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_cpu_seconds",
        "process_open_fds",
        "python_gc_collections",
        "python_gc_objects_collected",
    } <= shared
    assert all(their_types[n] == our_types[n] for n in shared)


class _Broken(ProcessReader):
    def read(self) -> ProcessStats:
        raise OSError("proc went away")


def test_failing_process_read_is_contained_and_gc_still_reported() -> None:
    _safe.reset_for_tests()
    samples = scrape(RuntimeCollector(_Broken()))
    # e6observe's own readings are gone; prometheus_client's collectors still serve theirs.
    assert "process_unique_memory_bytes" not in samples and "process_threads" not in samples
    assert "python_gc_collections_total" in samples
    assert _safe.internal_errors().get("runtime.collect") == 1


def _otel() -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader]), reader


def _points(reader: Any) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


class _Counting(ProcessReader):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read(self) -> ProcessStats:
        self.reads += 1
        return super().read()


def test_otel_semantic_convention_instruments() -> None:
    provider, reader = _otel()
    rd = _Counting()
    try:
        register_otel(provider.get_meter("test"), reader=rd)
        pts = _points(reader)
        for spec in RUNTIME_SPECS:
            assert spec.otel_name in pts, spec.otel_name
        modes = {p.attributes["cpu.mode"] for p in pts["process.cpu.time"]}
        assert modes == {"user", "system"}
        gens = {p.attributes["cpython.gc.generation"] for p in pts["cpython.gc.collections"]}
        assert gens == set(range(len(gc.get_stats())))
        assert pts["process.memory.usage"][0].value > 1 << 20
        # Six process callbacks in one collection share a single /proc read.
        assert rd.reads == 1
    finally:
        provider.shutdown()


def test_otel_callbacks_report_nothing_when_disabled() -> None:
    provider, reader = _otel()
    on = {"v": False}
    try:
        register_otel(provider.get_meter("test"), enabled=lambda: on["v"])
        pts = _points(reader)
        assert not any(name.startswith(("process.", "cpython.")) and points for name, points in pts.items())
        on["v"] = True
        assert _points(reader).get("process.memory.usage")
    finally:
        provider.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_reader_follows_fork() -> None:
    rd = ProcessReader()
    parent_rss = rd.read().rss
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.write(w, str(rd._process().pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        child_pid = int(os.read(r, 64).decode())
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert child_pid == pid != os.getpid()
    assert parent_rss and rd._process().pid == os.getpid()


if sys.platform == "win32":  # pragma: no cover
    pytestmark = pytest.mark.skip(reason="POSIX process statistics")


def test_uss_is_reused_within_its_max_age_and_reread_after() -> None:
    cached, fresh = ProcessReader(uss_max_age=3600), ProcessReader(uss_max_age=0)
    c0, f0 = cached.read().uss, fresh.read().uss
    assert c0 and f0
    block = b"x" * (64 << 20)  # 64 MiB of touched, private pages
    try:
        assert cached.read().uss == c0
        assert fresh.read().uss >= f0 + (48 << 20)
        assert cached.read().rss >= len(block)  # the other figures are always read anew
    finally:
        del block


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux /proc")
def test_proc_stat_reading_agrees_with_psutil_and_leaves_psutil_unimported(tmp_path: Any) -> None:
    from e6observe.runtime import read_proc_stat

    st = ProcessStats()
    assert read_proc_stat(st)
    me = psutil.Process()
    mi = me.memory_info()
    assert abs(st.rss - mi.rss) < 4 * 2**20  # type: ignore[operator]
    assert st.vms is not None and abs(st.vms - mi.vms) < 16 * 2**20
    assert st.threads == me.num_threads()
    assert st.fds is not None and abs(st.fds - me.num_fds()) <= 1  # the listing's own fd
    ct = me.cpu_times()
    assert st.cpu_user is not None and abs(st.cpu_user - ct.user) < 0.5
    # A command name with spaces and parentheses does not shift the fields.
    fields = ["S"] + [str(i) for i in range(4, 53)]  # field k holds the number k
    (tmp_path / "stat").write_text("77 (we ird) (x) " + " ".join(fields) + "\n")
    odd = ProcessStats()
    assert read_proc_stat(odd, path=str(tmp_path / "stat"), fd_dir=str(tmp_path))
    assert (odd.threads, odd.vms) == (20, 23)
    assert odd.rss == 24 * os.sysconf("SC_PAGE_SIZE") and odd.fds == 1
    (tmp_path / "short").write_text("77 (x) S 1 2 3\n")
    assert not read_proc_stat(ProcessStats(), path=str(tmp_path / "short"))
    code = (
        "import sys, e6observe.runtime as r; st = r.ProcessReader().read(); "
        "print('psutil' in sys.modules, st.rss > 0, st.uss is not None)"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "True", "True"], out.stderr[-2000:]
