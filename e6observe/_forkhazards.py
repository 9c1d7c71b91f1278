"""The e6data connector's own fork hazards: made visible in a forked child, not silently repaired.

The child inherits cache A including the parent's in-flight query ids; they are never cleared
in the child and block its graceful switches forever
(``e6data_strategy_query_map_inherited_entries``). If another thread held the connector's
``_strategy_lock`` at fork time, every query in the child blocks
(``e6data_strategy_lock_held_at_fork``). Both are logged once. Two explicit, opt-in repairs
exist for applications that want them (call from gunicorn's ``post_fork``):
:func:`release_inherited_queries` and :func:`repair_strategy_lock`.

What the child inherited is noted by :func:`note_after_fork`, registered with ``_fork`` (phase
``stores``) by :func:`install` when the watcher, which reports the two gauges, starts.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading

from . import _fork
from . import metrics as M

logger = logging.getLogger("e6observe")

#: At most this many inherited query ids are remembered (a leaking parent could have many).
INHERITED_CAP = 10000

#: Set in a forked child: the query ids it inherited, and whether the strategy lock was held.
_inherited: frozenset[str] = frozenset()
_lock_held_at_fork = False


def install() -> None:
    """Note the connector's fork hazards in every forked child from now on (idempotent)."""
    _fork.register("stores", note_after_fork, "fork.connector")


def note_after_fork() -> None:
    """In a forked child (the only thread alive, so the connector's map can be iterated safely
    here and nowhere else): which query ids it inherited, whether the strategy lock is held."""
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
        logger.warning(
            "e6observe: this process (pid %d) was forked with %d query id(s) still "
            "open in the e6data connector's strategy map; they block graceful "
            "blue/green switches here (e6data_strategy_query_map_inherited_entries)",
            os.getpid(),
            len(_inherited),
        )
    if _lock_held_at_fork:
        logger.warning(
            "e6observe: this process (pid %d) was forked while another thread held "
            "the e6data connector's strategy lock; its queries will block "
            "(e6data_strategy_lock_held_at_fork)",
            os.getpid(),
        )


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
    return {
        M.QUERY_MAP_INHERITED.prom_name: float(inherited_entries()),
        M.STRATEGY_LOCK_HELD_AT_FORK.prom_name: 1.0 if _lock_held_at_fork else 0.0,
    }


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
        raise TimeoutError(
            "the e6data connector's strategy lock is held; see e6observe._forkhazards.repair_strategy_lock"
        )
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


__all__ = [
    "install",
    "note_after_fork",
    "inherited_entries",
    "lock_held_at_fork",
    "readings",
    "release_inherited_queries",
    "repair_strategy_lock",
    "INHERITED_CAP",
]
