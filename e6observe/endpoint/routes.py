"""The status routes as ``instrument()`` mounts them: loaded at their first request.

``/``, ``/status``, ``/events`` and the page's static files are put on the endpoint at once,
each as a small stand-in; the first request to any of them loads the real apps
(:func:`e6observe.endpoint.status.mount`, with ``status_page.py``: about 0.2 MiB of RSS that a
process nobody looks at need not carry, issue 17), which replace the stand-ins on the server,
and is answered by them. The latency history the page's chart reads starts at once
(``history.py``): the chart covers the time before the first visit, as before.

Nothing here imports :mod:`.status`; the caller passes the function that mounts it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Optional

from .. import _fork

#: The page's own files: route -> (file in ``e6observe/endpoint/static``, content type).
STATIC_FILES = {
    "/static/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/static/status.css": ("status.css", "text/css; charset=utf-8"),
}
#: Every status route, in the order :func:`e6observe.endpoint.status.mount` adds them.
PATHS = ("/", "/status", "/events", *STATIC_FILES)


class LazyMount:
    """The status routes on ``server``, answered by the apps ``load()`` mounts at the first
    request (it returns a ``status.Mounted`` whose ``apps`` maps each path to its app).

    Same surface as ``status.Mounted`` for its owner: ``server``, ``paths``, ``unmount()``.
    """

    def __init__(self, server: Any, history: Any, load: Callable[[], Any]) -> None:
        self.server = server
        self.history = history
        self._load = load
        self._lock = threading.Lock()
        self._real: Any = None
        self._closed = False
        self.paths = list(PATHS)
        for path in self.paths:
            server.add_route(path, _StandIn(self, path))
        # A forked child may uninstrument while a parent thread was loading the apps (holding
        # the lock): it gets a fresh one instead of waiting forever.
        _fork.register("locks", self._reset_after_fork, "fork.status.routes")

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """True once a request has loaded the real apps."""
        return self._real is not None

    def real(self) -> Optional[Any]:
        """The real mount, loaded now if no request has loaded it yet (None once unmounted)."""
        with self._lock:
            if self._real is None and not self._closed:
                self._real = self._load()
            return self._real

    def unmount(self) -> None:
        """Take the routes off the server and stop the history (idempotent)."""
        _fork.unregister("locks", self._reset_after_fork)
        with self._lock:
            self._closed = True
            real = self._real
        if real is not None:
            real.unmount()  # its routes (the same paths) and the history it was handed
        else:
            for path in self.paths:
                self.server.remove_route(path)
            self.history.stop()
        self.paths = []


class _StandIn:
    """One route until the real apps are loaded: loads them and hands the request over."""

    def __init__(self, mount: LazyMount, path: str) -> None:
        self.mount = mount
        self.path = path

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        real = self.mount.real()
        app = real.apps.get(self.path) if real is not None else None
        if app is None:  # unmounted meanwhile
            body = b"not found\n"
            start_response(
                "404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
            )
            return [body]
        return app(environ, start_response)  # type: ignore[no-any-return]


def endpoint_of(inst: Any) -> tuple[Any, Any]:
    """(the running endpoint, the watcher) of a live ``instrument()`` (``_api``'s
    ``_Instrumentation``); the endpoint is None when there is none running."""
    server = watcher = None
    for component, obj, _stop in getattr(inst, "sinks", ()):
        if component == "sink.prometheus":
            server = getattr(obj, "server", None)
        elif component == "watcher":
            watcher = obj
    if server is None or not getattr(server, "running", False):
        server = None
    return server, watcher


def mount_lazily(server: Any, recorder: Any, load: Callable[[Any], Any]) -> LazyMount:
    """Put the stand-ins on ``server`` and start the latency history of ``recorder``;
    ``load(history)`` mounts the real apps (``status.mount(..., history=history)``)."""
    from .history import LatencyHistory

    history = LatencyHistory(recorder)
    history.start()
    return LazyMount(server, history, lambda: load(history))


__all__ = ["LazyMount", "mount_lazily", "endpoint_of", "PATHS", "STATIC_FILES"]
