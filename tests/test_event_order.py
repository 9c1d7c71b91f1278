"""Event seq order is ring order, so a stream resuming after the last id it saw misses nothing.

Found by the chaos soak (tests/soak.py): under 32 query threads the ``/events`` stream sent a few
ids after a higher one. The recorder took an event's seq and appended it to the ring in two steps;
a thread paused between them let another thread's later seq into the ring first. The stream copes
within one connection (it sends the late one when it lands), but a client that reconnected with
``Last-Event-ID`` = the higher id in that window never got the lower one, and saw no gap either.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from e6observe.endpoint import status
from e6observe.events import Event, EventRing
from e6observe.recorder import Recorder

pytestmark = pytest.mark.timeout(30)


def _pause_first_append_of(
    thread_name: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event]:
    """EventRing.append stalls in ``thread_name`` until released (as a descheduled thread)."""
    orig = EventRing.append
    entered, release = threading.Event(), threading.Event()

    def append(self: EventRing, event: Event) -> None:
        if threading.current_thread().name == thread_name and not entered.is_set():
            entered.set()
            assert release.wait(10)
        orig(self, event)

    monkeypatch.setattr(EventRing, "append", append)
    return entered, release


def _second_event_while_first_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Recorder, threading.Thread, threading.Event]:
    """A retry event stalls on its way into the ring while a mismatch event lands; returns the
    recorder, the stalled thread and the event that releases it."""
    rec = Recorder(event_capacity=16)
    entered, release = _pause_first_append_of("slow-emitter", monkeypatch)
    slow = threading.Thread(target=rec.retry, args=(1, "mismatch"), name="slow-emitter")
    slow.start()
    assert entered.wait(10)
    rec.mismatch("blue", "prepareStatement")  # lands while the first event is in flight
    return rec, slow, release


def test_an_event_emitted_while_another_is_in_flight_gets_the_later_seq(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rec, slow, release = _second_event_while_first_in_flight(monkeypatch)
    release.set()
    slow.join(10)
    events = rec.ring.snapshot()
    assert [e.seq for e in events] == [1, 2]
    assert [e.kind for e in events] == ["mismatch", "retry"]  # seq follows the ring's order
    assert rec.ring.emitted == 2


def test_a_stream_resumed_after_the_last_id_it_saw_misses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    rec, slow, release = _second_event_while_first_in_flight(monkeypatch)
    # A stream sends what the ring holds now, then its client goes away.
    first = status._Cursor(0)
    got: list[Any] = first.take(rec.ring.snapshot(first.watermark), 100, rec.ring.emitted)
    last_id = max(e.seq for e in got)
    release.set()
    slow.join(10)
    # The client reconnects with Last-Event-ID: the new stream starts after that id.
    again = status._Cursor(last_id)
    got += again.take(rec.ring.snapshot(again.watermark), 100, rec.ring.emitted)
    assert sorted(e.seq for e in got) == [1, 2]


def test_an_event_built_with_its_own_seq_keeps_it() -> None:
    ring = EventRing(4)
    ring.append(Event(7, "detected", to_strategy="blue"))
    assert [e.seq for e in ring.snapshot()] == [7]
