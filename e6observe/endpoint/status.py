"""The status document, the live status page and the event stream, as WSGI apps.

Mounted on the metrics endpoint (``server.MetricsServer``) by :func:`mount`, so they share its
exposure rules (loopback by default, TLS and basic auth when configured):

* ``/`` — the status page, rendered on the server with its state at the time of the request
  (:mod:`e6observe.endpoint.status_page`: tiles, a timeline with a time axis, latency per colour over the
  last minutes, switches, events), so it is useful without JavaScript and in a first screenshot.
  Its script and style are shipped in ``e6observe/endpoint/static`` (no CDN); the script reads
  ``/status``, follows ``/events`` and keeps the page up to date while it is open;
* ``/status`` — a JSON :func:`build_status` document whose field names are those of
  ``e6observe.v1.StatusSnapshot`` (proto/e6observe/v1/events.proto);
* ``/events`` — server-sent events, one JSON ``StrategyEvent`` per event, ``id:`` = its
  ``seq``. A client reconnecting with ``Last-Event-ID`` resumes from the event ring; a client
  that fell further behind than the ring holds sees a gap in ``seq`` (the ring counted what it
  evicted). ``?since=N`` does the same for clients that cannot send the header; without either
  a stream starts with the next event.

The stream never buffers per client: it reads the recorder's bounded ring, at most
:data:`MAX_BATCH` events per write, and at most :data:`MAX_STREAMS` streams are open at once so
that event-stream clients cannot take every connection slot from Prometheus scrapes. Clients that
never read cannot keep those slots: a stream's send buffer is small (:data:`STREAM_SNDBUF`), a
write blocked for the server's ``write_timeout`` ends the stream, and when every slot is taken a
new client ends the oldest stream open for at least :data:`EVICT_AFTER` seconds (a browser
reconnects and resumes from ``Last-Event-ID``; nothing is lost that the ring still holds). HEAD
never starts a stream (the server answers it from the GET headers). Streams end within a second
of ``MetricsServer.close()``.

Nothing served contains a secret: events and the snapshot carry strategies, counts, durations
and process identity only — never a password, token or query text.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Iterator, Optional
from urllib.parse import parse_qs

from .. import _fork
from .._safe import contain
from ..events import Event
from ..recorder import Recorder
from .routes import STATIC_FILES, endpoint_of

#: Events included in a snapshot's ``recent_events`` by default, and at most (``?events=N``).
DEFAULT_RECENT_EVENTS = 100
MAX_RECENT_EVENTS = 1000
#: Event-stream connections served at once; more get 503 with Retry-After.
MAX_STREAMS = 16
#: Events written per chunk of the stream.
MAX_BATCH = 256
#: Seconds between keep-alive comments on an idle stream (also how soon a gone client is noticed).
HEARTBEAT_SECONDS = 10.0
#: How often a waiting stream re-checks for shutdown.
WAKE_SECONDS = 0.5
#: EventSource reconnect delay suggested to browsers, in milliseconds.
RETRY_MS = 2000
#: A stream open this long may be ended to make room for a new client when every slot is taken.
EVICT_AFTER = 5.0
#: Send buffer of a stream's socket: a client that does not read fills it (and the write
#: deadline ends the stream) after kilobytes, not after the kernel's megabytes.
STREAM_SNDBUF = 32 * 1024

#: The page loads only its own files and talks only to its own origin.
_PAGE_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
]


# -- the snapshot ------------------------------------------------------------------------------
def event_json(ev: Event, source: Any = None) -> dict[str, Any]:
    """``ev`` as the proto3 JSON of ``StrategyEvent`` (proto field names, ``kind`` as the enum
    name, e.g. ``EVENT_KIND_APPLIED``): what ``json_format.ParseDict`` reads back. ``source``
    (a ``Source`` message) is attached for events leaving the process, as the schema asks."""
    from ..v1.convert import event_to_proto, to_json_dict

    return to_json_dict(event_to_proto(ev, source))


def build_status(
    recorder: Recorder,
    watcher: Any = None,
    process_reader: Any = None,
    max_events: int = DEFAULT_RECENT_EVENTS,
) -> dict[str, Any]:
    """The ``StatusSnapshot`` of ``recorder`` as proto3 JSON (proto field names, every field).

    ``watcher`` (an ``e6observe.watcher.Watcher``) and ``process_reader`` (an
    ``e6observe.runtime.ProcessReader``) are optional; without them the ``watcher`` and
    ``memory`` parts are zero. A failure reading either is contained and leaves its part zero.
    """
    from ..v1.convert import source_info, status_snapshot, to_json_dict

    memory: Optional[dict[str, int]] = None
    if process_reader is not None:
        with contain("status.memory"):
            ps = process_reader.shared()
            memory = {
                "rss_bytes": int(ps.rss or 0),
                "vms_bytes": int(ps.vms or 0),
                "uss_bytes": int(ps.uss or 0),
            }
    wstate: Optional[dict[str, Any]] = None
    pending_age: Optional[float] = None
    if watcher is not None:
        with contain("status.watcher"):
            wstate = {
                "running": bool(watcher.running),
                "last_run_unix": float(watcher.last_run or 0.0),
                "interval_seconds": float(watcher.interval),
            }
            age = getattr(watcher, "pending_age", None)
            if callable(age):
                pending_age = float(age() or 0.0)
    n = max(0, min(int(max_events), MAX_RECENT_EVENTS))
    snap = status_snapshot(recorder, source=source_info(), recent_events=n, memory=memory, watcher=wstate)
    if pending_age and not snap.pending_age_seconds:
        # A pending strategy the watcher saw in the connector's cache but no hook reported.
        snap.pending_age_seconds = pending_age
    return to_json_dict(snap)


# -- WSGI apps ---------------------------------------------------------------------------------
StartResponse = Callable[..., Any]


def _query(environ: dict[str, Any]) -> dict[str, list[str]]:
    try:
        return parse_qs(environ.get("QUERY_STRING", "") or "", max_num_fields=10)
    except ValueError:
        return {}


_ASCII_INT = re.compile(r"-?[0-9]{1,18}")


def _ascii_int(text: str) -> Optional[int]:
    """An integer written in ASCII digits only (``int()`` also takes ``1_000``, Arabic-Indic and
    fullwidth digits: not what a client means), else None."""
    text = text.strip(" \t")
    return int(text) if _ASCII_INT.fullmatch(text) else None


def _int_param(q: dict[str, list[str]], name: str) -> Optional[int]:
    values = q.get(name)
    if not values:
        return None
    return _ascii_int(values[0])


def _plain(
    start_response: StartResponse, status: str, text: str, extra: Optional[list[tuple[str, str]]] = None
) -> list[bytes]:
    body = text.encode("utf-8")
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))] + (extra or []),
    )
    return [body]


def _only_get(environ: dict[str, Any], start_response: StartResponse) -> Optional[list[bytes]]:
    if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
        return _plain(start_response, "405 Method Not Allowed", "GET only\n", [("Allow", "GET, HEAD")])
    return None


class StatusApp:
    """``GET /status``: the :func:`build_status` JSON (``?events=N`` recent events, default 100)."""

    def __init__(self, recorder: Recorder, watcher: Any = None, process_reader: Any = None) -> None:
        self.recorder = recorder
        self.watcher = watcher
        self.process_reader = process_reader

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        refused = _only_get(environ, start_response)
        if refused is not None:
            return refused
        n = _int_param(_query(environ), "events")
        doc = build_status(
            self.recorder, self.watcher, self.process_reader, DEFAULT_RECENT_EVENTS if n is None else n
        )
        body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        return [body] if environ.get("REQUEST_METHOD") != "HEAD" else []


class _Notifier:
    """Wakes waiting streams when the recorder emits an event (subscribed once per mount)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.generation = 0

    def __call__(self, _event: Any) -> None:  # runs on the recorder's dispatcher thread
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        with self.cond:
            if self.generation == seen:
                self.cond.wait(timeout)
            return self.generation


class _Cursor:
    """Which events a stream has sent, robust to events entering the ring slightly out of order.

    Two threads can take seq 4 and 5 and append 5 first; "everything above the last seq sent"
    would then skip 4. The cursor keeps a watermark (every seq up to it was sent or is gone from
    the ring) plus the few seqs above it already sent.
    """

    def __init__(self, watermark: int) -> None:
        self.watermark = watermark
        self.sent: set[int] = set()

    def take(self, events: list[Any], limit: int, emitted: int) -> list[Any]:
        """The events of ``events`` (a ring snapshot above the watermark) not sent yet, oldest
        first, at most ``limit``. ``emitted`` is the ring's count read *before* the snapshot."""
        fresh = sorted((e for e in events if e.seq not in self.sent), key=lambda e: e.seq)[:limit]
        self.sent.update(e.seq for e in fresh)
        present = [e.seq for e in events]
        # If the ring had taken in at least max(present) events before the snapshot, every seq
        # up to it was appended; one missing from the snapshot was evicted, not merely late.
        settled = bool(present) and emitted >= max(present)
        lowest = min(present) if present else 0
        while True:
            nxt = self.watermark + 1
            if nxt in self.sent:
                self.sent.discard(nxt)
                self.watermark = nxt
            elif settled and nxt < lowest:
                self.watermark = lowest - 1  # evicted before this stream saw them: a gap
            else:
                break
        if len(self.sent) > 4 * MAX_BATCH:  # only a stuck append could get here; stay bounded
            self.watermark = max(self.sent)
            self.sent.clear()
        return fresh


def _sse(ev: Event, source: Any) -> str:
    data = json.dumps(event_json(ev, source), separators=(",", ":"))
    return f"id: {ev.seq}\ndata: {data}\n\n"


class _SlotHeld:
    """A stream response holding one of the stream slots until it is closed (or evicted).

    WSGI servers call ``close()`` on every response, iterated or not; a bare generator that was
    never started would skip its ``finally`` and keep the slot forever. An evicted stream's slot
    passes to the client that evicted it, so ``close()`` then releases nothing.
    """

    def __init__(self, app: EventStreamApp, since: int, stopping: Optional[threading.Event]) -> None:
        self.app = app
        self.started = time.monotonic()
        self.cancel = threading.Event()
        self.holds_slot = True
        self._gen = app._stream(since, stopping, self.cancel)

    def __iter__(self) -> Iterator[bytes]:
        return self._gen

    def close(self) -> None:
        try:
            self._gen.close()  # type: ignore[attr-defined]
        finally:
            self.app._release(self)


class EventStreamApp:
    """``GET /events``: server-sent events from the recorder's ring (see the module docstring)."""

    def __init__(
        self,
        recorder: Recorder,
        notifier: Optional[_Notifier] = None,
        max_streams: int = MAX_STREAMS,
        heartbeat: float = HEARTBEAT_SECONDS,
        evict_after: float = EVICT_AFTER,
    ) -> None:
        self.recorder = recorder
        self.notifier = notifier or _Notifier()
        self.heartbeat = heartbeat
        self.max_streams = max_streams
        self.evict_after = evict_after
        #: Open streams, oldest first (one entry per slot); guarded by _count_lock.
        self._open: dict[int, _SlotHeld] = {}
        self.closed = threading.Event()
        self.open_streams = 0
        self.evicted = 0
        self._count_lock = threading.Lock()

    def _admit(self, held: _SlotHeld) -> bool:
        """Give ``held`` a slot: a free one, or that of the oldest stream if it has been open
        for ``evict_after`` seconds (that stream ends). False when there is none."""
        with self._count_lock:
            victim = None
            if len(self._open) >= self.max_streams:
                victim = next(iter(self._open.values()))
                if time.monotonic() - victim.started < self.evict_after:
                    return False
                del self._open[id(victim)]
                victim.holds_slot = False
                victim.cancel.set()
                self.evicted += 1
            self._open[id(held)] = held
        if victim is not None:
            with self.notifier.cond:
                self.notifier.cond.notify_all()
        return True

    def _release(self, held: _SlotHeld) -> None:
        with self._count_lock:
            if held.holds_slot:
                held.holds_slot = False
                self._open.pop(id(held), None)

    def _start_seq(self, environ: dict[str, Any]) -> int:
        ring = self.recorder.ring
        latest = ring.emitted  # seq numbers run 1..emitted without gaps
        resume: Optional[int] = None
        header = environ.get("HTTP_LAST_EVENT_ID")
        if header:
            resume = _ascii_int(header)
        if resume is None:
            resume = _int_param(_query(environ), "since")
        if resume is None:
            return latest  # only what happens from now on
        if resume < 0 or resume > latest:
            # An id from before this process started (a restart reset seq): replay the ring.
            return 0
        return resume

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        refused = _only_get(environ, start_response)
        if refused is not None:
            return refused
        if self.closed.is_set():
            return _plain(start_response, "503 Service Unavailable", "event stream closed\n")
        held = _SlotHeld(self, self._start_seq(environ), environ.get("e6observe.stopping"))
        if not self._admit(held):
            held.holds_slot = False
            held.close()
            return _plain(
                start_response,
                "503 Service Unavailable",
                f"too many event streams (at most {self.max_streams})\n",
                [("Retry-After", "5")],
            )
        sock = environ.get("e6observe.socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
            except (OSError, ValueError, AttributeError):
                pass
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/event-stream; charset=utf-8"),
                ("Cache-Control", "no-store"),
                ("X-Accel-Buffering", "no"),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        return held

    def _stream(
        self, since: int, stopping: Optional[threading.Event], cancel: threading.Event
    ) -> Iterator[bytes]:
        with self._count_lock:
            self.open_streams += 1
        try:
            yield f"retry: {RETRY_MS}\n: e6observe event stream\n\n".encode()
            from ..v1.convert import source_info

            src = source_info()
            cursor = _Cursor(since)
            seen = self.notifier.generation
            last_write = time.monotonic()
            while not (
                self.closed.is_set() or cancel.is_set() or (stopping is not None and stopping.is_set())
            ):
                ring = self.recorder.ring
                emitted = ring.emitted
                batch = cursor.take(ring.snapshot(cursor.watermark), MAX_BATCH, emitted)
                if batch:
                    yield "".join(_sse(e, src) for e in batch).encode("utf-8")
                    last_write = time.monotonic()
                    continue  # more may be waiting beyond MAX_BATCH
                if time.monotonic() - last_write >= self.heartbeat:
                    # A comment line: keeps proxies from timing the stream out, and a write to
                    # a client that went away ends this generator.
                    yield b": keep-alive\n\n"
                    last_write = time.monotonic()
                seen = self.notifier.wait(seen, WAKE_SECONDS)
        finally:
            with self._count_lock:
                self.open_streams -= 1

    def close(self) -> None:
        """End every open stream (within :data:`WAKE_SECONDS`) and refuse new ones."""
        self.closed.set()
        with self.notifier.cond:
            self.notifier.cond.notify_all()


def _read_static(name: str) -> bytes:
    # Imported here, at the first request for a static file: importlib.resources (and pathlib)
    # are about 0.25 MiB that instrument() need not load.
    from importlib import resources

    return resources.files("e6observe.endpoint").joinpath("static", name).read_bytes()


class StaticApp:
    """Serves one file shipped in ``e6observe/endpoint/static`` (read once, at first request)."""

    def __init__(self, name: str, content_type: str) -> None:
        self.name = name
        self.content_type = content_type
        self._body: Optional[bytes] = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        refused = _only_get(environ, start_response)
        if refused is not None:
            return refused
        if self._body is None:
            self._body = _read_static(self.name)
        start_response(
            "200 OK",
            [("Content-Type", self.content_type), ("Content-Length", str(len(self._body)))] + _PAGE_HEADERS,
        )
        return [self._body] if environ.get("REQUEST_METHOD") != "HEAD" else []


class PageApp:
    """``GET /``: the status page with the state of this moment rendered into it."""

    def __init__(self, status: StatusApp, history: Any) -> None:
        self.status = status
        self.history = history

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        from . import status_page

        refused = _only_get(environ, start_response)
        if refused is not None:
            return refused
        doc = build_status(
            self.status.recorder, self.status.watcher, self.status.process_reader, status_page.PAGE_EVENTS * 4
        )
        body = status_page.render(doc, self.history.snapshot(), self.history.started).encode("utf-8")
        start_response(
            "200 OK",
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))]
            + _PAGE_HEADERS,
        )
        return [body] if environ.get("REQUEST_METHOD") != "HEAD" else []


class Mounted:
    """What :func:`mount` put on a server; :meth:`unmount` takes it off again."""

    def __init__(
        self,
        server: Any,
        recorder: Recorder,
        apps: dict[str, Any],
        stream: EventStreamApp,
        history: Any = None,
    ) -> None:
        self.server = server
        self.recorder = recorder
        #: Path -> its app (``routes.LazyMount`` hands its first requests over to them).
        self.apps = apps
        self.paths = list(apps)
        self.stream = stream
        self.history = history

    def unmount(self) -> None:
        """Remove the routes, end open streams, stop listening to the recorder. Idempotent."""
        for p in self.paths:
            with contain("status"):
                self.server.remove_route(p)
        self.paths = []
        if self.history is not None:
            self.history.stop()
        self.stream.close()
        self.recorder.unsubscribe(self.stream.notifier)
        with _MOUNT_LOCK:
            if _MOUNTED.get(self.server) is self:
                del _MOUNTED[self.server]


#: server -> what is mounted on it, so that mounting twice on one server is a no-op.
_MOUNTED: weakref.WeakKeyDictionary[Any, Mounted] = weakref.WeakKeyDictionary()
_MOUNT_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    """A fresh mount lock in a forked child: a parent thread may have been mounting (the lazy
    mount's first request) or unmounting at the fork, and the child's uninstrument() would
    then wait for it forever."""
    global _MOUNT_LOCK
    _MOUNT_LOCK = threading.Lock()


def mount(
    server: Any, recorder: Recorder, watcher: Any = None, process_reader: Any = None, history: Any = None
) -> Mounted:
    """Mount ``/``, ``/status``, ``/events`` and the page's assets on a ``MetricsServer``.

    ``watcher`` and ``process_reader`` feed the snapshot's ``watcher`` and ``memory`` parts;
    ``history``: the page's running latency history (None: one is started here); unmounting
    stops it. Mounting again on a server that already carries them returns what is there.
    """
    _fork.register("locks", _reset_after_fork, "fork.status")  # once, at the first mount
    with _MOUNT_LOCK:
        existing = _MOUNTED.get(server)
        if existing is not None and existing.paths:
            return existing
        stream = EventStreamApp(recorder)
        recorder.subscribe(stream.notifier)
        if history is None:
            from .history import LatencyHistory

            history = LatencyHistory(recorder)
            history.start()
        status_app = StatusApp(recorder, watcher, process_reader)
        routes: dict[str, Any] = {"/": PageApp(status_app, history), "/status": status_app, "/events": stream}
        for path, (name, ctype) in STATIC_FILES.items():
            routes[path] = StaticApp(name, ctype)
        for path, app in routes.items():
            server.add_route(path, app)
        mounted = Mounted(server, recorder, routes, stream, history)
        _MOUNTED[server] = mounted
        return mounted


def mount_instrumentation(inst: Any, history: Any = None) -> Any:
    """Mount the status routes on the endpoint of a live ``instrument()`` (``_api``'s
    ``_Instrumentation``): its recorder, its Prometheus sink's server, its watcher. None when
    there is no running endpoint (no ``prometheus_port``, or the port was taken).

    ``instrument()`` has mounted them already (``inst.status``, loaded at the first request:
    ``routes.py``): that mount is returned, unless ``history`` is given (the lazy mount's
    first request loading the real apps, with the history it started)."""
    if history is None and getattr(inst, "status", None) is not None:
        return inst.status
    server, watcher = endpoint_of(inst)
    if server is None:
        return None
    reader = None
    with contain("status.memory"):
        from ..runtime import ProcessReader

        reader = ProcessReader()
    return mount(server, inst.recorder, watcher=watcher, process_reader=reader, history=history)


__all__ = [
    "build_status",
    "event_json",
    "StatusApp",
    "PageApp",
    "EventStreamApp",
    "StaticApp",
    "mount",
    "mount_instrumentation",
    "Mounted",
    "MAX_STREAMS",
]
