"""The event schema: generated code matches the .proto, and Event <-> proto conversions hold."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import subproc
from google.protobuf import json_format
from helpers import unavailable
from hypothesis import given, settings
from hypothesis import strategies as st

from e6observe import metrics as M
from e6observe.events import Event
from e6observe.recorder import Recorder
from e6observe.v1 import convert
from e6observe.v1 import events_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("e6observe/v1/events_pb2.py", "e6observe/v1/events_pb2.pyi")


def protoc_python() -> str:
    """The pinned generator's Python (``scripts/regen-proto --setup`` makes it)."""
    py = os.environ.get("E6OBSERVE_PROTOC_PYTHON") or str(ROOT / ".venv-protoc" / "bin" / "python")
    if not os.path.exists(py):
        unavailable(f"{py} is missing; run: scripts/regen-proto --setup (./run test does)")
    return py


def test_committed_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    """Fails when events.proto changed and scripts/regen-proto was not run (or the pinned
    generator changed). Needs the pinned grpcio-tools: ``scripts/regen-proto --setup``."""
    protoc_python()
    proc = subproc.run(
        ["bash", str(ROOT / "scripts" / "regen-proto"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        pytest.fail("scripts/regen-proto could not generate the schema code:\n" + proc.stderr)
    for rel in GENERATED:
        fresh = (tmp_path / rel).read_bytes()
        committed = (ROOT / rel).read_bytes()
        assert fresh == committed, f"{rel} drifted from proto/; run scripts/regen-proto"


def test_committed_code_runs_on_protobuf_4(tmp_path: Path) -> None:
    """The oldest protobuf major e6observe allows: the generator's venv has protobuf 4.x."""
    py = protoc_python()
    pkg = tmp_path / "e6observe" / "v1"
    pkg.mkdir(parents=True)
    (tmp_path / "e6observe" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "events_pb2.py").write_bytes((ROOT / GENERATED[0]).read_bytes())
    script = (
        "import google.protobuf as g\n"
        "from e6observe.v1 import events_pb2 as pb\n"
        "m = pb.StatusSnapshot(active='blue', switch_count=3)\n"
        "m.in_flight['blue'] = 2\n"
        "m.recent_events.add(seq=1, kind=pb.EVENT_KIND_APPLIED, drain_seconds=0.0)\n"
        "b = pb.StatusSnapshot.FromString(m.SerializeToString())\n"
        "assert b == m and b.recent_events[0].HasField('drain_seconds')\n"
        "print(g.__version__)\n"
    )
    proc = subproc.run(
        [py, "-W", "error", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("4."), proc.stdout


@pytest.mark.matrix
def test_generated_code_carries_no_runtime_version_pin() -> None:
    """Code from a newer protoc refuses older protobuf runtimes; e6observe allows >= 4.21."""
    text = (ROOT / GENERATED[0]).read_text()
    assert "runtime_version" not in text
    assert "# Protobuf Python Version: 4." in text


@pytest.mark.matrix
def test_event_fields_are_the_proto_fields() -> None:
    proto_fields = [f.name for f in pb.StrategyEvent.DESCRIPTOR.fields if f.name != "source"]
    assert list(Event.__slots__) == proto_fields


@pytest.mark.matrix
def test_every_event_kind_has_an_enum_value_and_back() -> None:
    names = {v.name for v in pb.EventKind.DESCRIPTOR.values}
    assert names == {"EVENT_KIND_UNSPECIFIED"} | {"EVENT_KIND_" + k.upper() for k in M.EVENT_KINDS}
    for kind in M.EVENT_KINDS:
        assert convert.kind_from_proto(convert.kind_to_proto(kind)) == kind
    with pytest.raises(ValueError):
        convert.kind_from_proto(pb.EVENT_KIND_UNSPECIFIED)
    with pytest.raises(ValueError):
        convert.kind_to_proto("purple")


_labels = st.sampled_from(("", *M.STRATEGY_LABELS))


@pytest.mark.matrix
@settings(max_examples=60, deadline=None)
@given(
    seq=st.integers(1, 2**63),
    kind=st.sampled_from(M.EVENT_KINDS),
    frm=_labels,
    to=_labels,
    cause=st.sampled_from(("", *M.SWITCH_CAUSES)),
    drain=st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False)),
    pinned=st.integers(0, 2**32 - 1),
    attempt=st.integers(0, 5),
    t=st.floats(0, 4e9, allow_nan=False),
    pid=st.integers(1, 2**22),
)
def test_event_round_trips_through_proto_bytes(
    seq: int,
    kind: str,
    frm: str,
    to: str,
    cause: str,
    drain: float | None,
    pinned: int,
    attempt: int,
    t: float,
    pid: int,
) -> None:
    ev = Event(
        seq,
        kind,
        from_strategy=frm,
        to_strategy=to,
        cause=cause,
        drain_seconds=drain,
        pinned_queries=pinned,
        strategy=to,
        method="prepareStatement",
        attempt=attempt,
        reason="mismatch" if attempt else "",
        time_unix=t,
        pid=pid,
    )
    wire = convert.event_to_proto(ev).SerializeToString()
    back = convert.event_from_proto(pb.StrategyEvent.FromString(wire))
    assert back.to_dict() == ev.to_dict()
    assert back.drain_seconds == drain  # None stays None, 0.0 stays 0.0


@pytest.mark.matrix
def test_source_is_attached_only_when_given() -> None:
    ev = Event(1, "detected", to_strategy="blue", strategy="blue")
    assert not convert.event_to_proto(ev).HasField("source")
    src = convert.source_info(service_name="shop")
    msg = convert.event_to_proto(ev, src)
    assert msg.source.service_name == "shop"
    assert msg.source.pid == ev.pid
    assert msg.source.e6observe_version


@pytest.mark.matrix
def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    bounds = (1.0, 2.0, 4.0)
    # 10 values in (1, 2]: the median is half-way through that bucket.
    assert convert.histogram_quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(1.5)
    # 90 in the first bucket, 10 in (2, 4]: p99 is at 9/10 of the third bucket.
    assert convert.histogram_quantile(0.99, bounds, [90, 0, 10, 0]) == pytest.approx(3.8)
    # Ranks in +Inf report the highest finite bound; empty histograms report 0.
    assert convert.histogram_quantile(0.99, bounds, [1, 0, 0, 99]) == 4.0
    assert convert.histogram_quantile(0.5, bounds, [0, 0, 0, 0]) == 0.0
    with pytest.raises(ValueError):
        convert.histogram_quantile(1.5, bounds, [1, 0, 0, 0])


def _busy_recorder() -> Recorder:
    rec = Recorder(event_capacity=4)
    rec.detected("blue")
    rec.announced("green")
    rec.query_started("blue")
    rec.applied("blue", "green", "announced", pinned_queries=1)
    rec.mismatch("green", "prepareStatement")
    rec.mismatch("green", "executeStatement")
    rec.retry(1, "mismatch")
    for _ in range(10):
        rec.query_finished("green", "ok", 0.003)
    rec.rpc_histogram("prepareStatement", "green", "OK").observe(0.0007)
    rec.family(M.EVENTS_DROPPED).counter("dispatch").inc(2)
    return rec


@pytest.mark.matrix
def test_status_snapshot_reflects_the_recorder() -> None:
    rec = _busy_recorder()
    snap = convert.status_snapshot(
        rec,
        source=convert.source_info("svc"),
        recent_events=3,
        memory={"rss_bytes": 123},
        internal_errors={"hook.x": 2},
        watcher={"running": True, "last_run_unix": 5.0, "interval_seconds": 1.0},
    )
    assert snap.active == "green" and snap.pending == "" and snap.pending_age_seconds == 0.0
    assert snap.switch_count == 1
    applied = [s for s in snap.switches if s.count]
    assert [(s.from_strategy, s.to_strategy, s.cause) for s in applied] == [("blue", "green", "announced")]
    assert len(snap.switches) == 2 * len(M.SWITCH_CAUSES)  # zero-initialised directions too
    assert snap.mismatch_count == 2
    assert dict(snap.in_flight) == {"blue": 1, "green": 0}
    query = [lat for lat in snap.latency if lat.kind == "query"]
    assert [(q.strategy, q.count) for q in query] == [("green", 10)]
    assert 0.001 < query[0].p50_seconds <= 0.005  # the bucket 0.003 falls in
    assert [(r.strategy, r.count) for r in snap.latency if r.kind == "rpc"] == [("green", 1)]
    # 6 events emitted into a ring of 4: 2 evicted, the last 3 reported, oldest first.
    assert (snap.events.emitted, snap.events.in_ring, snap.events.evicted) == (6, 4, 2)
    assert [e.seq for e in snap.recent_events] == [4, 5, 6]
    assert dict(snap.events.dropped) == {"dispatch": 2}
    assert dict(snap.internal_errors) == {"hook.x": 2}
    assert snap.memory.rss_bytes == 123 and snap.watcher.running


@pytest.mark.matrix
def test_pending_age_counts_from_the_announcement() -> None:
    rec = Recorder()
    rec.detected("blue")
    rec.announced("green")
    now = time.time() + 7.0
    snap = convert.status_snapshot(rec, now=now)
    assert snap.pending == "green"
    assert snap.pending_age_seconds == pytest.approx(now - rec.pending_since)


@pytest.mark.matrix
def test_json_dict_has_plain_numbers_and_parses_back() -> None:
    snap = convert.status_snapshot(_busy_recorder(), source=convert.source_info("svc"))
    d = convert.to_json_dict(snap)
    text = json.dumps(d)
    assert d["switch_count"] == 1 and d["recent_events"][0]["seq"] == 3
    assert d["events"]["dropped"] == {"dispatch": 2}
    assert d["pending"] == ""  # defaults are present, so readers need no fallbacks
    back = json_format.ParseDict(json.loads(text), pb.StatusSnapshot())
    assert back == snap
    # An applied event keeps its drain time; a retry has none (absent, not 0).
    events = {e["kind"]: e for e in d["recent_events"]}
    assert "drain_seconds" in events["EVENT_KIND_APPLIED"]
    assert "drain_seconds" not in events["EVENT_KIND_RETRY"]
