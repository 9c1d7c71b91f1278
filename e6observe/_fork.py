"""Fork safety: the one registry of what a forked child must reset, and in which order.

gunicorn ``--preload``, uWSGI, Celery's prefork pool and ``multiprocessing`` with the ``fork``
start method all fork a process that may already be instrumented. In the child:

* **Locks may be held forever.** A lock another parent thread held at the instant of the fork
  stays held in the child: every module and object replaces its own locks with fresh ones.
* **Metrics start from zero.** Decision: every process reports its own, per-process values.
  The child's counters, histograms, event ring and internal-error counts are reset; its
  blue/green *state* (active, pending) is kept, because the connector's cache it describes is
  inherited too. This is what makes multi-process aggregation correct: a preloading master's
  switches stay in the master's numbers, and summing the workers never counts them again.
* **Threads are gone.** The watcher (and the recorder's dispatcher) are restarted.

This module knows none of those components (it imports nothing of the package but ``_safe``):
each one registers its own reset with :func:`register`, in one of four phases that run in this
order, each phase in registration order:

``locks``   fresh locks for module-level state (nothing else in the child may block on one);
``stores``  stores start from zero (the recorder, its families and event ring), inherited
            connector state is noted;
``sinks``   sinks that read the stores (so a sink's baseline or first write sees the reset
            store), re-key their files, drop the parent's sockets;
``threads`` background threads start again, over reset stores and sinks.

Before the first phase the registry renews its own lock and the containment counters
(``_safe``), which every registered reset reports its failures through. Each reset runs
contained (``e6observe_internal_errors_total{component}``): one failing component leaves the
others to run.

``os.register_at_fork`` handlers cannot be removed: the package registers exactly one, on the
first :func:`register`; components register and unregister their resets as they start and stop
(instrument/uninstrument cycles leave no handler behind that would run twice).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable, Optional, Union

from . import _safe

#: The phases, in the order they run in a forked child.
PHASES = ("locks", "stores", "sinks", "threads")

#: Number of forks this process came out of as the child (0 in an original process).
fork_generation = 0

_Ref = Union["weakref.WeakMethod[Callable[[], None]]", Callable[[], Callable[[], None]]]


class _Entry:
    """One registered reset: the function (a bound method is held weakly) and its component."""

    __slots__ = ("ref", "component")

    def __init__(self, fn: Callable[[], None], component: str) -> None:
        self.ref: _Ref
        if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
            # Registering a method must not keep its object alive (a stopped watcher, a closed
            # sink): the entry dies with the object.
            self.ref = weakref.WeakMethod(fn)
        else:
            self.ref = _strong(fn)
        self.component = component

    def fn(self) -> Optional[Callable[[], None]]:
        return self.ref()


def _strong(fn: Callable[[], None]) -> Callable[[], Callable[[], None]]:
    return lambda: fn


_entries: dict[str, list[_Entry]] = {phase: [] for phase in PHASES}
_lock = threading.Lock()
_installed = False


def install() -> None:
    """Register the package's one at-fork handler (once per process; later calls do nothing)."""
    global _installed
    with _lock:
        if _installed or not hasattr(os, "register_at_fork"):
            return
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _installed = True


def register(phase: str, fn: Callable[[], None], component: Optional[str] = None) -> None:
    """Run ``fn()`` in every forked child, in ``phase`` (one of :data:`PHASES`), contained under
    ``component`` (default ``fork.<phase>``).

    Idempotent: a function (or an equal bound method: same object, same method) registered
    again in the same phase is kept once, at its first place. A bound method is held weakly.
    """
    if phase not in _entries:
        raise ValueError(f"unknown fork phase {phase!r}; one of {', '.join(PHASES)}")
    install()
    with _lock:
        entries = _entries[phase]
        live = [e for e in entries if e.fn() is not None]
        if not any(e.fn() == fn for e in live):
            live.append(_Entry(fn, component or f"fork.{phase}"))
        entries[:] = live


def unregister(phase: str, fn: Callable[[], None]) -> None:
    """Stop running ``fn`` in forked children (nothing if it is not registered)."""
    with _lock:
        entries = _entries.get(phase)
        if entries is not None:
            entries[:] = [e for e in entries if e.fn() is not None and e.fn() != fn]


def registered(phase: str) -> list[Callable[[], None]]:
    """The live resets of ``phase``, in the order they run (for tests and diagnostics)."""
    with _lock:
        return [fn for fn in (e.fn() for e in _entries[phase]) if fn is not None]


def _after_fork_in_child() -> None:
    # Runs in the child, in the thread that called fork, before fork() returns: the only
    # thread alive. The registry's lock may have been held by a parent thread: replaced, and
    # the entries read without it.
    global fork_generation, _lock
    fork_generation += 1
    _lock = threading.Lock()
    _safe.reset_after_fork()
    for phase in PHASES:
        for entry in list(_entries[phase]):
            fn = entry.fn()
            if fn is not None:
                with _safe.contain(entry.component):
                    fn()


__all__ = ["PHASES", "install", "register", "unregister", "registered", "fork_generation"]
