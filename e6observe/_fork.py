"""Fork safety: what a child process gets after ``os.fork()``, and what it must not keep.

gunicorn ``--preload``, uWSGI, Celery's prefork pool and ``multiprocessing`` with the ``fork``
start method all fork a process that may already be instrumented. In the child:

* **Threads are gone.** The watcher (and the recorder's dispatcher) are restarted.
* **Locks may be held forever.** A lock another parent thread held at the instant of the fork
  stays held in the child. Every lock of the recorder, its children, the event ring and the
  containment counters is replaced by a fresh one.
* **Metrics start from zero.** Decision: every process reports its own, per-process values.
  The child's counters, histograms, event ring and internal-error counts are reset; its
  blue/green *state* (active, pending) is kept, because the connector's cache it describes is
  inherited too. This is what makes multi-process aggregation correct: a preloading master's
  switches stay in the master's numbers, and summing the workers never counts them again.
* **The connector's own hazards are made visible, not silently repaired.** The child inherits
  cache A including the parent's in-flight query ids; they are never cleared in the child and
  block its graceful switches forever (``e6data_strategy_query_map_inherited_entries``). If
  another thread held the connector's ``_strategy_lock`` at fork time, every query in the child
  blocks (``e6data_strategy_lock_held_at_fork``). Both are logged once. Two explicit, opt-in
  repairs exist for applications that want them (call from gunicorn's ``post_fork``):
  :func:`release_inherited_queries` and :func:`repair_strategy_lock`.

``os.register_at_fork`` handlers cannot be removed; the handler is registered once, on the
first :func:`watch`, and does nothing while e6observe is not instrumented.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
import weakref
from typing import Any, Callable, Optional

from . import metrics as M
from ._safe import contain

logger = logging.getLogger("e6observe")

#: At most this many inherited query ids are remembered (a leaking parent could have many).
INHERITED_CAP = 10000

_registered = False
_register_lock = threading.Lock()
_watchers: weakref.WeakSet[Any] = weakref.WeakSet()
_child_callbacks: list[Callable[[], None]] = []

#: Set in a forked child: the query ids it inherited, and whether the strategy lock was held.
_inherited: frozenset[str] = frozenset()
_lock_held_at_fork = False
#: Number of forks this process came out of as the child (0 in an original process).
fork_generation = 0


def install() -> None:
    """Register the at-fork handler (once per process; later calls do nothing)."""
    global _registered
    with _register_lock:
        if _registered or not hasattr(os, "register_at_fork"):
            return
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _registered = True


def watch(watcher: Any) -> None:
    """Restart ``watcher`` (anything with ``_after_fork_in_child()``) in every forked child."""
    install()
    _watchers.add(watcher)


def unwatch(watcher: Any) -> None:
    _watchers.discard(watcher)


def on_fork_child(fn: Callable[[], None]) -> None:
    """Run ``fn()`` (contained) in every forked child, after the recorder is reset and before
    watchers restart. For sinks with threads or per-process files. Idempotent per function."""
    install()
    if fn not in _child_callbacks:
        _child_callbacks.append(fn)


def remove_fork_child(fn: Callable[[], None]) -> None:
    try:
        _child_callbacks.remove(fn)
    except ValueError:
        pass


def _after_fork_in_child() -> None:
    # Runs in the child, in the thread that called fork, before fork() returns: the only
    # thread alive, so the connector's map can be iterated safely here and nowhere else.
    global fork_generation
    fork_generation += 1
    with contain("fork"):
        _reset_own_locks()
    with contain("fork.connector"):
        _note_connector_hazards()
    recorders: dict[int, Any] = {}
    with contain("fork.recorder"):
        from .recorder import get_recorder

        rec = get_recorder()
        if rec is not None:
            recorders[id(rec)] = rec
        for w in list(_watchers):
            r = getattr(w, "recorder", None)
            if r is not None:
                recorders[id(r)] = r
    for r in recorders.values():
        with contain("fork.recorder"):
            reset_recorder(r)
    with contain("fork.multiprocess"):
        _forget_multiprocess_baselines()
    with contain("fork.pool"):
        from .hooks import pool

        pool._after_fork_in_child()
    for fn in list(_child_callbacks):
        with contain("fork.callback"):
            fn()
    for w in list(_watchers):
        with contain("fork.watcher"):
            w._after_fork_in_child()


def _reset_own_locks() -> None:
    from . import _safe, connections, recorder

    _safe._lock = threading.Lock()
    with _safe._lock:
        _safe._errors.clear()  # per-process counts, like every other metric
    recorder._current_lock = threading.Lock()
    connections.reset_after_fork()
    global _register_lock
    _register_lock = threading.Lock()


def reset_recorder(rec: Any) -> None:
    """Make ``rec`` a fresh per-process store in a forked child: new locks, zeroed counters and
    histograms, an empty event ring, a running dispatcher; blue/green state kept.

    Children stay the same objects (hooks may hold pre-bound ones); only their values reset.
    """
    rec._state_lock = threading.Lock()
    rec.reset_in_flight()
    rec.created = time.time()
    for fam in list(rec.families.values()):
        fam._lock = threading.Lock()
        for _, child in fam.items():
            if hasattr(child, "bounds"):  # histogram (not "counts": a property that locks)
                child.reset()
            else:
                child._lock = threading.Lock()
                child.value = 0.0
    ring = rec.ring
    ring._lock = threading.Lock()
    ring._events.clear()
    ring._seq = itertools.count(1)
    ring.emitted = 0
    ring.evicted = 0
    rec._queue.clear()
    d = rec._dispatcher
    if d is not None and d.is_alive():
        # Started in this child already (by another at-fork handler resubscribing): it waits
        # on the current condition, which must stay.
        return
    # The parent's dispatcher did not survive the fork; its condition may have been held.
    rec._wake = threading.Condition(threading.Lock())
    rec._dispatcher = None
    rec._stopping = False
    if rec._subscribers:
        rec._start_dispatcher()


def _forget_multiprocess_baselines() -> None:
    # The multi-process writer's own fork handler subtracts a baseline of the parent's counts;
    # the recorder now starts from zero, so a baseline taken before this reset (at-fork
    # handlers run in registration order) would subtract the parent's counts twice.
    mp = sys.modules.get("e6observe.sinks.multiprocess")
    for w in list(getattr(mp, "_WRITERS", ()) or ()):
        if getattr(w, "_baseline", None) is not None:
            w._baseline = None


def _note_connector_hazards() -> None:
    global _inherited, _lock_held_at_fork
    _inherited = frozenset()
    _lock_held_at_fork = False
    try:
        from e6data_python_connector import e6data_grpc
    except Exception:
        return
    cache = getattr(e6data_grpc, "_local_strategy_cache", None)
    qmap = cache.get("query_strategy_map") if cache is not None else None
    if qmap:
        _inherited = frozenset(itertools.islice(iter(list(qmap.keys())), INHERITED_CAP))
    lock = getattr(e6data_grpc, "_strategy_lock", None)
    _lock_held_at_fork = bool(lock is not None and lock.locked())
    if _inherited:
        logger.warning("e6observe: this process (pid %d) was forked with %d query id(s) still "
                       "open in the e6data connector's strategy map; they block graceful "
                       "blue/green switches here (e6data_strategy_query_map_inherited_entries)",
                       os.getpid(), len(_inherited))
    if _lock_held_at_fork:
        logger.warning("e6observe: this process (pid %d) was forked while another thread held "
                       "the e6data connector's strategy lock; its queries will block "
                       "(e6data_strategy_lock_held_at_fork)", os.getpid())


def inherited_entries() -> int:
    """How many query ids inherited at fork are still in the connector's map (0 if none)."""
    ids = _inherited
    if not ids:
        return 0
    try:
        from e6data_python_connector import e6data_grpc
    except Exception:
        return 0
    qmap = e6data_grpc._local_strategy_cache.get("query_strategy_map")
    if not qmap:
        return 0
    # Membership tests are single-key reads: safe without the connector's lock.
    return sum(1 for q in ids if q in qmap)


def lock_held_at_fork() -> bool:
    """True if this process was forked while another thread held the strategy lock, and it
    has not been repaired."""
    return _lock_held_at_fork


def readings() -> dict[str, float]:
    """The fork-hazard gauges by Prometheus name (0 in a process that was not forked)."""
    return {M.QUERY_MAP_INHERITED.prom_name: float(inherited_entries()),
            M.STRATEGY_LOCK_HELD_AT_FORK.prom_name: 1.0 if _lock_held_at_fork else 0.0}


def release_inherited_queries(timeout: float = 1.0) -> int:
    """Opt-in repair: remove the query ids this process inherited at fork from the connector's
    query map, through the connector's own ``_cleanup_query_strategy`` (so hooks see it), so
    that graceful switches can complete in this process. Returns how many were removed.

    Call it in the child only (e.g. gunicorn ``post_fork``): the parent's queries are not this
    process's. Raises TimeoutError if the connector's strategy lock stays busy for ``timeout``.
    """
    from e6data_python_connector import e6data_grpc

    ids = _inherited
    if not ids:
        return 0
    lock = e6data_grpc._strategy_lock
    if not lock.acquire(timeout=timeout):
        raise TimeoutError("the e6data connector's strategy lock is held; "
                           "see e6observe._fork.repair_strategy_lock")
    lock.release()
    removed = 0
    for qid in ids:
        if qid in e6data_grpc._local_strategy_cache.get("query_strategy_map", {}):
            e6data_grpc._cleanup_query_strategy(qid)
            removed += 1
    return removed


def repair_strategy_lock() -> bool:
    """Opt-in repair: if this process was forked while another thread held the connector's
    strategy lock, replace the (forever held) lock with a new one. Returns True if replaced.

    The connector looks its lock up as a module global on every use, so the new one takes
    effect at once. Only for a child whose :func:`lock_held_at_fork` is True.
    """
    global _lock_held_at_fork
    if not _lock_held_at_fork:
        return False
    from e6data_python_connector import e6data_grpc

    e6data_grpc._strategy_lock = threading.Lock()
    _lock_held_at_fork = False
    return True


def child_state() -> dict[str, Optional[object]]:
    """A summary for status pages and tests."""
    return {"fork_generation": fork_generation, "inherited_query_ids": len(_inherited),
            "inherited_entries": inherited_entries(), "lock_held_at_fork": _lock_held_at_fork}


__all__ = ["install", "watch", "unwatch", "on_fork_child", "remove_fork_child", "reset_recorder",
           "inherited_entries", "lock_held_at_fork", "readings", "release_inherited_queries",
           "repair_strategy_lock", "child_state", "fork_generation"]
