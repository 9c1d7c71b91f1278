"""Connection tracking: which connector connections exist, for the open-connections gauge.

The channel and pool hooks call :func:`track_connection` for every connection they see; the
watcher's reading (``e6data_connections_open``) asks :func:`open_connections` at collection
time. References are weak, so tracking never keeps a connection alive.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

_connections: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()


def track_connection(conn: Any) -> None:
    """Count ``conn`` (a connector ``Connection`` or ``AsyncConnection``) in the open-connections
    gauge while it has an open channel. Cheap, idempotent, never raises."""
    try:
        with _lock:
            _connections.add(conn)
    except TypeError:  # not weak-referenceable: nothing to track
        pass


def open_connections() -> int:
    """Tracked connector connections whose gRPC channel is open right now."""
    with _lock:
        conns = list(_connections)
    return sum(1 for c in conns if getattr(c, "_channel", None) is not None)


def reset_after_fork() -> None:
    """In a forked child: a new lock (another thread may have held the parent's at fork time).
    The child's copies of the parent's connections stay tracked: they are the child's too."""
    global _lock
    _lock = threading.Lock()


__all__ = ["track_connection", "open_connections", "reset_after_fork"]
