"""Containment: every failure inside e6observe is counted, logged once, and never raised.

Hooks run inside the host application's queries; a bug or a broken sink in e6observe must cost
the application nothing but a counter increment. ``contain`` is the only way hook and sink code
reports its own failures.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

logger = logging.getLogger("e6observe")

#: component -> count of contained failures. Read by the sinks as e6observe_internal_errors_total.
_errors: dict[str, int] = {}
_logged: set[tuple[str, str]] = set()
_lock = threading.Lock()
#: Called with (component,) after each counted failure; the recorder hooks itself in here.
_listeners: list[Callable[[str], None]] = []


def record_internal_error(
    component: str, exc: Optional[BaseException] = None, *, reported: bool = False
) -> None:
    """Count one contained failure in ``component``; log it the first time its kind is seen.

    ``reported=True``: the caller has logged its own, clearer message for this failure (a
    taken port, an unusable directory); it is counted, and the generic line is never added for
    this component and kind.

    Never raises. Safe to call while the connector's strategy lock is held: the log record is
    emitted by the ``e6observe`` logger only, which reads no connector state.
    """
    try:
        kind = type(exc).__name__ if exc is not None else "error"
        with _lock:
            _errors[component] = _errors.get(component, 0) + 1
            first = (component, kind) not in _logged
            if first:
                _logged.add((component, kind))
        if first and not reported:
            # Exception text can carry server-provided strings; type and component only.
            logger.warning(
                "e6observe: contained a %s in %s; further ones are only counted "
                "(e6observe_internal_errors_total{component=%r})",
                kind,
                component,
                component,
            )
    except Exception:  # pragma: no cover - logging itself failed; nothing more to do
        pass


def internal_errors() -> dict[str, int]:
    """A copy of the per-component failure counts."""
    with _lock:
        return dict(_errors)


def reset_after_fork() -> None:
    """In a forked child: a fresh lock (a parent thread may have held this one), and counts of
    this process's own failures only, like every other metric. What was logged stays logged."""
    global _lock
    _lock = threading.Lock()
    with _lock:
        _errors.clear()


def reset_for_tests() -> None:
    with _lock:
        _errors.clear()
        _logged.clear()


class contain:
    """Context manager: swallow and count any exception from the block under ``component``.

    >>> with contain("sink.prometheus"):
    ...     raise RuntimeError("boom")      # counted, logged once, not raised
    """

    __slots__ = ("component",)

    def __init__(self, component: str) -> None:
        self.component = component

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: Optional[BaseException], tb: object) -> bool:
        if exc is not None and isinstance(exc, Exception):
            record_internal_error(self.component, exc)
            return True
        return False
