"""Multi-process Prometheus with real forked processes: one scrape sums every worker's switches,
mismatches and latencies, shows live gauges per pid, keeps dead workers' counts (folded into one
file, so the directory stays bounded) and drops their gauges."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any, Optional

import pytest
import requests
from helpers import sink_options as opts
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from e6observe import _safe
from e6observe import metrics as M
from e6observe.recorder import Recorder, get_recorder, set_recorder
from e6observe.sinks.multiprocess import (
    DEAD_FILE,
    MultiProcessCollector,
    ProcessStateWriter,
    raw_state,
)
from e6observe.sinks.prometheus import PrometheusSink

FORK = multiprocessing.get_context("fork")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SWITCHES = "e6data_strategy_switches_total"


def scrape(collector_or_registry: Any) -> Samples:
    reg = collector_or_registry
    if not isinstance(reg, CollectorRegistry):
        reg = CollectorRegistry()
        reg.register(collector_or_registry)
    out: Samples = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(
        v for (n, lbl), v in samples.items() if n == name and all((k, x) in lbl for k, x in match.items())
    )


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(lbl) for (n, lbl) in samples if n == name]


class Heartbeat:
    """A per-process collector like the watcher's: one unlabelled gauge."""

    def __init__(self, value: float) -> None:
        self.value = value

    def collect(self) -> list[Any]:
        return [GaugeMetricFamily(M.WATCHER_LAST_RUN.prom_name, M.WATCHER_LAST_RUN.help, value=self.value)]


def drive(rec: Recorder, switches: int, mismatches: int, rpcs: int) -> None:
    """``switches`` flips starting from blue, alternating announced / mismatch causes."""
    rec.detected("blue")
    cur = "blue"
    for i in range(switches):
        nxt = "green" if cur == "blue" else "blue"
        if i % 2 == 0:
            rec.announced(nxt)
            rec.applied(cur, nxt, "announced")
        else:
            rec.mismatch(cur, "executeStatement")
            rec.applied(cur, nxt, "mismatch")
        cur = nxt
    for _ in range(mismatches):
        rec.mismatch(cur, "getNextResultBatch")
    h = rec.rpc_histogram("executeStatement", cur, "OK")
    for i in range(rpcs):
        h.observe(0.001 * (i + 1))


def worker(
    directory: str,
    switches: int,
    mismatches: int,
    rpcs: int,
    ready: Any,
    leave: Any,
    heartbeat: Optional[float] = None,
) -> None:
    rec = Recorder()
    w = ProcessStateWriter(directory, rec)
    if heartbeat is not None:
        w.add_process_collector(Heartbeat(heartbeat))
    drive(rec, switches, mismatches, rpcs)
    w.flush()  # what the watcher does once per interval (latencies, mismatch storms)
    ready.put(os.getpid())
    leave.poll(30)
    # Exits without close(): the lock goes away with the process, as on a crash.


class Leave:
    """A pipe per worker, told together: a worker leaves when its pipe becomes readable.

    Not a shared multiprocessing Event: once a worker is SIGKILLed inside ``Event.wait()`` it
    stays counted as a sleeper, and ``Event.set()`` then waits forever for it to wake.
    """

    def __init__(self, n: int) -> None:
        self.pipes = [FORK.Pipe(duplex=False) for _ in range(n)]
        self.events = [r for r, _ in self.pipes]  # what each worker waits on (``poll``)

    def set(self) -> None:
        for _, w in self.pipes:
            try:
                w.send(None)
            except OSError:  # that worker is gone
                pass


def start_workers(
    directory: Path, plan: list[tuple[int, int, int]], heartbeat: bool = False
) -> tuple[list[Any], Leave, list[int]]:
    ready, leave = FORK.Queue(), Leave(len(plan))
    procs = [
        FORK.Process(
            target=worker,
            args=(str(directory), s, m, r, ready, leave.events[i], float(i + 1) if heartbeat else None),
        )
        for i, (s, m, r) in enumerate(plan)
    ]
    for p in procs:
        p.start()
    ready_pids = {ready.get(timeout=30) for _ in procs}
    pids = [p.pid for p in procs]  # in plan order
    assert ready_pids == set(pids)
    return procs, leave, pids


def stop_workers(procs: list[Any], leave: Any) -> None:
    leave.set()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0


def final_strategy(switches: int) -> str:
    return "green" if switches % 2 else "blue"


PLAN = [(1, 2, 5), (2, 0, 3), (3, 1, 7), (4, 3, 1)]  # (switches, extra mismatches, rpcs)


@pytest.mark.matrix
def test_one_scrape_sums_four_forked_workers(tmp_path: Path) -> None:
    procs, leave, pids = start_workers(tmp_path, PLAN)
    try:
        s = scrape(MultiProcessCollector(str(tmp_path)))
        want_switches = sum(p[0] for p in PLAN)
        assert total(s, SWITCHES) == want_switches == 10
        # Every worker's flips are in it, with their causes: 0-based even flips were announced.
        assert total(s, SWITCHES, cause="announced") == sum((n + 1) // 2 for n, _, _ in PLAN)
        assert total(s, SWITCHES, cause="mismatch") == sum(n // 2 for n, _, _ in PLAN)
        assert total(s, "e6data_strategy_mismatches_total") == sum(n // 2 + m for n, m, _ in PLAN)
        assert total(s, "e6data_rpc_duration_seconds_count") == sum(r for _, _, r in PLAN)
        assert total(s, "e6data_strategy_switch_drain_seconds_count") == 6
        # Live gauges: one blue and one green series per worker, labelled with its pid.
        active = {
            (d["pid"], d["strategy"]): v
            for (n, lbl), v in s.items()
            if n == "e6data_strategy_active"
            for d in [dict(lbl)]
        }
        assert {int(pid) for pid, _ in active} == set(pids)
        for pid, (n, _, _) in zip(pids, PLAN):
            assert active[(str(pid), final_strategy(n))] == 1.0
            other = "blue" if final_strategy(n) == "green" else "green"
            assert active[(str(pid), other)] == 0.0
        assert s[("e6data_strategy_last_switch_timestamp_seconds", frozenset())] > 0
    finally:
        stop_workers(procs, leave)

    # All four are dead now: their counts stay, their gauges go, their files are folded.
    coll = MultiProcessCollector(str(tmp_path))
    s2 = scrape(coll)
    assert total(s2, SWITCHES) == 10
    assert total(s2, "e6data_rpc_duration_seconds_count") == 16
    assert series(s2, "e6data_strategy_active") == []
    assert coll.compacted == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEAD_FILE, "e6observe.lock"]
    assert total(scrape(coll), SWITCHES) == 10  # and again: nothing counted twice


def test_killed_worker_keeps_its_switches(tmp_path: Path) -> None:
    procs, leave, pids = start_workers(tmp_path, [(3, 0, 0), (2, 0, 0)])
    os.kill(pids[0], signal.SIGKILL)
    procs[0].join(30)
    try:
        s = scrape(MultiProcessCollector(str(tmp_path)))
        assert total(s, SWITCHES) == 5
        assert {d["pid"] for d in series(s, "e6data_strategy_active")} == {str(pids[1])}
    finally:
        leave.set()
        procs[1].join(30)


def test_per_process_collectors_show_every_live_worker(tmp_path: Path) -> None:
    procs, leave, pids = start_workers(tmp_path, [(1, 0, 0), (1, 0, 0)], heartbeat=True)
    try:
        s = scrape(MultiProcessCollector(str(tmp_path)))
        beats = {
            d["pid"]: s[(M.WATCHER_LAST_RUN.prom_name, frozenset(d.items()))]
            for d in series(s, M.WATCHER_LAST_RUN.prom_name)
        }
        assert beats == {str(pids[0]): 1.0, str(pids[1]): 2.0}
    finally:
        stop_workers(procs, leave)
    assert series(scrape(MultiProcessCollector(str(tmp_path))), M.WATCHER_LAST_RUN.prom_name) == []


def test_sink_endpoint_serves_merged_view_and_its_own_live_state(tmp_path: Path) -> None:
    # Workers first: a worker forked after the sink would inherit it (that case has its own test).
    procs, leave, pids = start_workers(tmp_path, [(2, 0, 1), (3, 0, 1)])
    rec = Recorder()
    sink = PrometheusSink(rec, opts(multiprocess_dir=str(tmp_path), prometheus_port=0))
    try:
        sink.start()
        drive(rec, 1, 0, 0)  # the serving process itself: read live, no flush needed
        text = requests.get(sink.server.url + "/metrics", timeout=10).text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        sw = sum(x.value for x in fams["e6data_strategy_switches"].samples)
        assert sw == 6
        pids_seen = {x.labels["pid"] for x in fams["e6data_strategy_active"].samples}
        assert pids_seen == {str(os.getpid())} | {str(p) for p in pids}
    finally:
        stop_workers(procs, leave)
        sink.close()
        rec.stop()


def test_forked_child_reports_only_its_own_counts(tmp_path: Path) -> None:
    """gunicorn --preload: the instrumented parent forks; the child inherits the recorder."""
    rec = Recorder()
    prev = get_recorder()
    set_recorder(rec)  # as instrument() does; any fork handler of the watcher resets it too
    sink = PrometheusSink(rec, opts(multiprocess_dir=str(tmp_path)))
    try:
        drive(rec, 3, 0, 0)  # 3 switches in the parent before the fork

        ready, leave = FORK.Queue(), FORK.Event()

        def child() -> None:
            cur = rec.active or "blue"
            nxt = "green" if cur == "blue" else "blue"
            rec.applied(cur, nxt, "announced")  # one switch of the child's own
            sink.flush()
            ready.put(os.getpid())
            leave.wait(30)

        p = FORK.Process(target=child)
        p.start()
        child_pid = ready.get(timeout=30)
        s = scrape(sink.registry)
        assert total(s, SWITCHES) == 4  # 3 (parent) + 1 (child), the parent's not twice
        assert {d["pid"] for d in series(s, "e6data_strategy_active")} == {str(os.getpid()), str(child_pid)}
        leave.set()
        p.join(30)
        assert p.exitcode == 0
        assert total(scrape(sink.registry), SWITCHES) == 4
    finally:
        sink.close()
        set_recorder(prev)
        rec.stop()


def _fake_state(pid: int, switches: float) -> dict[str, Any]:
    """A state document as a (now dead) writer left it."""
    rec = Recorder()
    rec.families[M.SWITCHES.prom_name].counter("blue", "green", "mismatch").inc(switches)
    doc = raw_state(rec)
    doc.update(
        v=1,
        id=f"{pid}-deadbeef",
        pid=pid,
        s={"active": "green", "pending": None, "last_switch_time": 1000.0 + pid, "in_flight": {"green": 1}},
        m=[],
    )
    return doc


def test_many_dead_workers_fold_into_one_file(tmp_path: Path) -> None:
    n = 200
    for pid in range(100000, 100000 + n):
        # No lock file next to it: the writer is gone.
        (tmp_path / f"e6observe-{pid}-deadbeef.json").write_text(json.dumps(_fake_state(pid, 2)))
    coll = MultiProcessCollector(str(tmp_path))
    s = scrape(coll)
    assert total(s, SWITCHES) == 2 * n
    assert series(s, "e6data_strategy_active") == []
    assert s[("e6data_strategy_last_switch_timestamp_seconds", frozenset())] == 1000.0 + 100000 + n - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEAD_FILE, "e6observe.lock"]
    merged = json.loads((tmp_path / DEAD_FILE).read_text())["merged"]
    assert len(merged) == n


def test_crash_between_fold_and_delete_does_not_count_twice(tmp_path: Path) -> None:
    doc = _fake_state(4242, 5)
    path = tmp_path / "e6observe-4242-deadbeef.json"
    path.write_text(json.dumps(doc))
    coll = MultiProcessCollector(str(tmp_path))
    assert total(scrape(coll), SWITCHES) == 5
    path.write_text(json.dumps(doc))  # as if the delete after folding never happened
    assert total(scrape(coll), SWITCHES) == 5
    assert not path.exists()


def test_corrupt_file_is_contained_and_counted(tmp_path: Path) -> None:
    (tmp_path / "e6observe-777-deadbeef.json").write_text("{not json")
    (tmp_path / "e6observe-778-deadbeef.json").write_text(json.dumps(_fake_state(778, 1)))
    before = _safe.internal_errors().get("sink.multiprocess", 0)
    s = scrape(MultiProcessCollector(str(tmp_path)))
    assert total(s, SWITCHES) == 1
    assert _safe.internal_errors().get("sink.multiprocess", 0) > before


def test_hostile_file_cannot_add_label_values(tmp_path: Path) -> None:
    doc = _fake_state(779, 1)
    doc["c"][M.SWITCHES.prom_name].append(["blue", "green", "x" * 500, 9.0])  # label too long
    doc["c"][M.SWITCHES.prom_name].append(["blue", "green", 3.0])  # wrong label count
    doc["c"]["made_up_metric"] = [["a", 1.0]]
    (tmp_path / "e6observe-779-deadbeef.json").write_text(json.dumps(doc))
    s = scrape(MultiProcessCollector(str(tmp_path)))
    assert total(s, SWITCHES) == 1
    assert not any("made_up" in n for n, _ in s)


def test_taken_port_in_multiprocess_mode_fails_over(tmp_path: Path) -> None:
    a_rec, b_rec = Recorder(), Recorder()
    a = PrometheusSink(a_rec, opts(multiprocess_dir=str(tmp_path), prometheus_port=0))
    a.start()
    port = a.server.port
    b = PrometheusSink(b_rec, opts(multiprocess_dir=str(tmp_path), prometheus_port=port))
    try:
        b.start()  # another "worker" serves: not an error here
        assert not b.server.running
        drive(b_rec, 2, 0, 0)
        b.flush()
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert f"{SWITCHES}" in text
        a.close()
        b.flush()  # the serving worker went away: the next flush takes the port over
        assert b.server.running and b.server.port == port
        s = {
            f.name: f
            for f in text_string_to_metric_families(
                requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            )
        }
        assert sum(x.value for x in s["e6data_strategy_switches"].samples) == 2
    finally:
        a.close()
        b.close()
        a_rec.stop()
        b_rec.stop()


def test_event_driven_write_publishes_switches_without_flush(tmp_path: Path) -> None:
    rec = Recorder()
    w = ProcessStateWriter(str(tmp_path), rec)
    try:
        rec.detected("blue")
        rec.applied("blue", "green", "mismatch")
        assert rec.flush(5)  # the event reached the writer's subscriber
        doc = json.loads(Path(w.path).read_text())
        rows = doc["c"][M.SWITCHES.prom_name]
        assert ["blue", "green", "mismatch", 1.0] in rows
        assert doc["s"]["active"] == "green"
    finally:
        w.close()
        rec.stop()
