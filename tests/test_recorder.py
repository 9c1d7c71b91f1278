"""The recorder: bounded labels, exact event accounting, switch bookkeeping, containment."""

from __future__ import annotations

import threading

import pytest

from e6observe import _safe
from e6observe import metrics as M
from e6observe.events import Event, EventRing
from e6observe.recorder import Recorder, norm_code, norm_method, norm_strategy

pytestmark = pytest.mark.matrix


@pytest.mark.parametrize(
    "raw, label",
    [
        ("blue", "blue"),
        ("GREEN", "green"),
        (" green ", "green"),
        (b"blue", "blue"),
        (None, "none"),
        ("", "none"),
        ("purple", "invalid"),
        ("x" * 10_000, "invalid"),
        (b"\xff\xfe", "invalid"),
        (42, "invalid"),
        ("blue\x00", "invalid"),
    ],
)
def test_strategy_labels_are_a_bounded_set(raw: object, label: str) -> None:
    assert norm_strategy(raw) == label


def test_method_and_code_labels_are_bounded() -> None:
    assert norm_method("/QueryEngineService/prepareStatement") == "prepareStatement"
    assert norm_method(b"/QueryEngineService/clearOrCancelQuery") == "clearOrCancelQuery"
    assert norm_method("/evil/" + "a" * 500) == "other"
    assert norm_code("UNAVAILABLE") == "UNAVAILABLE"
    assert norm_code("NOT_A_CODE") == "UNKNOWN"


def test_switch_counters_exist_for_both_directions_from_the_start() -> None:
    rec = Recorder()
    fam = rec.family(M.SWITCHES)
    keys = {labels for labels, _ in fam.items()}
    for cause in M.SWITCH_CAUSES:
        assert ("blue", "green", cause) in keys and ("green", "blue", cause) in keys
    assert rec.switch_total() == 0


def test_announced_then_applied_counts_one_switch_with_drain_time() -> None:
    rec = Recorder()
    rec.detected("blue")
    rec.announced("green")
    rec.announced("green")  # repeated announcements are one pending switch
    assert rec.state()["pending"] == "green"
    rec.applied("blue", "green", "announced", pinned_queries=3)
    assert rec.switch_total() == 1
    assert rec.family(M.SWITCHES).counter("blue", "green", "announced").value == 1
    drain = rec.family(M.SWITCH_DRAIN).histogram()
    assert drain.count == 1
    st = rec.state()
    assert st["active"] == "green" and st["pending"] is None and st["last_switch_time"] > 0
    kinds = [e.kind for e in rec.ring]
    assert kinds == ["detected", "announced", "applied"]
    applied = rec.ring.snapshot()[-1]
    assert (applied.from_strategy, applied.to_strategy, applied.pinned_queries) == ("blue", "green", 3)
    assert applied.drain_seconds is not None and applied.drain_seconds >= 0


def test_a_mismatch_switch_has_no_drain_time() -> None:
    rec = Recorder()
    rec.detected("blue")
    rec.mismatch("blue", "prepareStatement")
    rec.cache_cleared("blue")
    rec.applied("blue", "green", "mismatch")
    assert rec.family(M.SWITCH_DRAIN).histogram().count == 0
    assert rec.family(M.MISMATCHES).counter("blue", "prepareStatement").value == 1
    assert rec.ring.snapshot()[-1].drain_seconds is None


def test_histogram_buckets_follow_prometheus_le_semantics() -> None:
    rec = Recorder()
    h = rec.rpc_histogram("authenticate", "blue", "OK")
    bounds = M.RPC_DURATION.buckets
    h.observe(bounds[0])  # exactly on a bound: counted in that bucket (le)
    h.observe(bounds[0] / 2)
    h.observe(bounds[-1] * 10)  # beyond the last bound: +Inf
    counts, total, n = h.snapshot()
    assert counts[0] == 2 and counts[-1] == 1 and n == 3
    assert total == pytest.approx(bounds[0] * 1.5 + bounds[-1] * 10)
    assert rec.rpc_histogram("authenticate", "blue", "OK") is h  # pre-bound child is reused


def test_concurrent_observations_are_not_lost() -> None:
    rec = Recorder()
    h = rec.rpc_histogram("clear", "green", "OK")

    def work() -> None:
        for _ in range(20_000):
            h.observe(0.002)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert h.snapshot()[2] == 160_000


def test_pending_values_are_folded_in_batches_and_by_every_reader() -> None:
    from e6observe.recorder import FOLD_AT

    rec = Recorder()
    h = rec.rpc_histogram("status", "blue", "OK")
    for _ in range(FOLD_AT - 1):
        h.observe(0.001)
    assert len(h.pending) == FOLD_AT - 1  # the hot path only appended
    assert h.count == FOLD_AT - 1 and h.pending == []  # a reader folds first
    for _ in range(FOLD_AT * 3 + 7):
        h.observe(0.001)
    assert len(h.pending) < FOLD_AT  # the observing thread folded on its own: bounded
    assert h.snapshot()[2] == FOLD_AT * 4 + 6


def test_the_otel_delta_is_exact_and_fixed_size_however_many_values() -> None:
    rec = Recorder()
    h = rec.rpc_histogram("status", "blue", "OK")
    h.observe(h.bounds[-1] * 2)  # before the sink started: no OpenTelemetry interval holds it
    rec.enable_otel(True)
    values = [0.0001 * (i % 50 + 1) for i in range(20_000)]
    for v in values:
        h.observe(v)
    d = h.take_otel()
    assert d is not None and d.n == 20_000 and sum(d.counts) == 20_000
    assert len(d.counts) == len(d.sums) == len(h.bounds) + 1
    assert (d.min, d.max) == (min(values), max(values))
    assert sum(d.sums) == pytest.approx(sum(values))
    counts, total, n = h.snapshot()
    assert n == 20_001 and counts[-1] == 1  # Prometheus saw everything, that one too
    assert h.take_otel() is None  # taken: nothing new
    rec.enable_otel(False)
    h.observe(0.001)
    assert h.take_otel() is None


@pytest.mark.parametrize("batch", [1, 7, 31, 32, 33, 256, 1000])
def test_a_fold_counts_every_value_in_its_le_bucket_whatever_the_batch_size(batch: int) -> None:
    # Small folds bisect per value, large ones sort and bisect per bucket: both must put every
    # value where Prometheus' le puts it, with exact per-bucket OpenTelemetry counts and sums.
    import random
    from bisect import bisect_left

    rng = random.Random(batch)
    rec = Recorder()
    rec.enable_otel(True)
    h = rec.rpc_histogram("prepareStatement", "green", "OK")
    bounds = h.bounds
    values = [
        rng.choice([0.0, rng.choice(bounds), rng.random() * bounds[-1] * 2, rng.random() * bounds[0]])
        for _ in range(batch)
    ]
    h.pending.extend(values)
    h.fold()
    want = [0] * (len(bounds) + 1)
    sums = [0.0] * (len(bounds) + 1)
    for v in values:
        want[bisect_left(bounds, v)] += 1
        sums[bisect_left(bounds, v)] += v
    d = h.take_otel()
    assert d is not None and d.counts == want and d.n == batch
    assert d.sums == pytest.approx(sums, rel=1e-12, abs=1e-15)
    assert (d.min, d.max) == (min(values), max(values))
    counts, total, n = h.snapshot()
    assert counts == want and n == batch and total == pytest.approx(sum(values), rel=1e-12)


def test_ring_accounting_is_exact_when_it_overflows() -> None:
    ring = EventRing(capacity=4)
    for _ in range(10):
        ring.append(Event(ring.next_seq(), "retry", attempt=1, reason="mismatch"))
    assert len(ring) == 4 and ring.emitted == 10 and ring.evicted == 6
    assert [e.seq for e in ring.snapshot()] == [7, 8, 9, 10]
    assert [e.seq for e in ring.snapshot(since_seq=8)] == [9, 10]


def test_event_kinds_are_checked_and_dicts_omit_empty_fields() -> None:
    with pytest.raises(ValueError):
        Event(1, "exploded")
    d = Event(5, "mismatch", strategy="blue", method="clear").to_dict()
    assert d["kind"] == "mismatch" and "drain_seconds" not in d and "cause" not in d


def test_subscribers_get_every_event_and_a_failing_one_is_contained() -> None:
    _safe.reset_for_tests()
    rec = Recorder()
    got: list[str] = []

    def broken(ev: Event) -> None:
        raise RuntimeError("sink down")

    rec.subscribe(broken)
    rec.subscribe(lambda ev: got.append(ev.kind))
    rec.detected("blue")
    rec.announced("green")
    rec.applied("blue", "green", "announced")
    assert rec.flush()
    rec.stop()
    assert got == ["detected", "announced", "applied"]
    assert _safe.internal_errors()["event.subscriber"] == 3
    assert rec._dispatcher is None


def test_dispatch_queue_is_bounded_and_counts_drops() -> None:
    rec = Recorder(dispatch_capacity=5)
    gate = threading.Event()
    rec.subscribe(lambda ev: gate.wait(5))
    for _ in range(50):
        rec.retry(1, "mismatch")
    dropped = rec.family(M.EVENTS_DROPPED).counter("dispatch").value
    gate.set()
    rec.stop()
    # the dispatcher holds at most one batch in hand; everything past the cap was counted
    assert dropped >= 50 - 5 - 5
    assert rec.ring.emitted == 50


def test_contain_counts_logs_once_and_swallows(caplog: pytest.LogCaptureFixture) -> None:
    _safe.reset_for_tests()
    for _ in range(3):
        with _safe.contain("hook.test"):
            raise KeyError("secret-ish detail")
    assert _safe.internal_errors() == {"hook.test": 3}
    warnings = [r for r in caplog.records if r.name == "e6observe"]
    assert len(warnings) == 1
    assert "secret-ish detail" not in warnings[0].getMessage()
    with pytest.raises(KeyboardInterrupt):  # only Exceptions are contained
        with _safe.contain("hook.test"):
            raise KeyboardInterrupt
