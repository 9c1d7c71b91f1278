"""Strategy-cache hook: every write to the connector's blue/green state becomes an event.

The sync connector (2.3.9+) keeps its process-wide blue/green state in one module dict,
``e6data_grpc._local_strategy_cache`` ("cache A"), and every writer - ``_set_active_strategy``,
``_set_pending_strategy``, ``_apply_pending_strategy``, ``_clear_strategy_cache``,
``_finish_query_cleanup`` (3.0.x), the direct key writes in ``Connection.get_session_id`` -
reaches it through ``_get_shared_strategy()``, which reads the module global on every call.
Wrapping those functions one by one misses the inline writers, so at install time the global is
replaced by :class:`ObservedCache`, a ``dict`` subclass holding the same contents whose
``__setitem__`` reports writes of ``active_strategy`` and ``pending_strategy``. Reads stay
plain ``dict`` reads (C speed). ``uninstall`` copies the current contents back into the original
dict object and puts that object back.

The report runs while the connector holds its non-reentrant ``_strategy_lock``: it only updates
the recorder (which has its own locks and hands events to its dispatcher thread) - no connector
calls, no logging through handlers that might read connector state.

How writes become events (the interpretation is process-level, like the cache):

* ``pending_strategy`` set to a colour it did not hold -> ``announced(to)``.
* ``active_strategy`` set to ``None`` from a colour -> ``cache_cleared(was)`` (the 456 path:
  ``re_auth`` or ``get_session_id`` clears the cache before learning the colour again).
* ``active_strategy`` set to a colour, compared with the last colour this process knew
  (``known``, which survives a clear):

  - nothing known yet -> ``detected(colour)``: the first strategy learned is not a switch;
  - same colour -> nothing (a clear followed by re-learning the same colour, or a re-assign);
  - another colour -> ``applied(known, colour, cause, pinned_queries)``, counted once, with
    ``cause="announced"`` when the write applies the pending colour on a live cache (the usual
    drained flip) and ``"mismatch"`` otherwise (the cache was cleared by a 456 and the other
    colour learned). ``pinned_queries`` counts query-map entries still pinned to the old colour.

So a switch through the 456 path (cache cleared, then the other colour learned) is one switch
old -> new with cause ``mismatch``, and several threads clearing and re-learning the same new
colour count it once.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from .._colours import COLOURS
from .._safe import record_internal_error
from ..recorder import Recorder, norm_strategy
from . import Hook, HookContext

_ACTIVE = "active_strategy"
_PENDING = "pending_strategy"
_QUERY_MAP = "query_strategy_map"


class _Interpreter:
    """Turns observed cache writes into recorder events. One per installation."""

    __slots__ = ("rec", "known", "_lock")

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        #: The last colour this process's connector held (survives a cache clear).
        self.known: Optional[str] = None
        # Writers normally hold _strategy_lock already; this lock keeps the interpretation
        # consistent even for the few unlocked writes. Only taken on strategy changes (rare).
        self._lock = threading.Lock()

    def on_write(self, cache: dict[str, Any], key: str, old: object, new: object) -> None:
        try:
            with self._lock:
                if key == _ACTIVE:
                    self._on_active(cache, old, new)
                else:
                    self._on_pending(new)
        except Exception as exc:  # never into the connector, which holds its lock here
            record_internal_error("hook.strategy_cache", exc)

    def _on_pending(self, new: object) -> None:
        if new:
            to = norm_strategy(new)
            if to != self.known:
                self.rec.announced(to)

    def _on_active(self, cache: dict[str, Any], old: object, new: object) -> None:
        rec = self.rec
        if not new:
            if old:
                rec.cache_cleared(norm_strategy(old))
            return
        to = norm_strategy(new)
        ref = self.known
        self.known = to
        if ref is None:
            rec.detected(to)
            return
        if ref == to:
            return
        cause = "announced" if (old and cache.get(_PENDING) == new) else "mismatch"
        rec.applied(ref, to, cause, pinned_queries=_pinned(cache, ref))


def _pinned(cache: dict[str, Any], strategy: str) -> int:
    qmap = cache.get(_QUERY_MAP)
    if not isinstance(qmap, dict):
        return 0
    # list() copies atomically under the GIL; iterating the live map could race a writer.
    return sum(1 for s in list(qmap.values()) if s == strategy)


class ObservedCache(dict):  # type: ignore[type-arg]
    """The connector's strategy cache, reporting strategy writes to an interpreter."""

    __slots__ = ("_e6observe",)
    _e6observe: Any

    def __setitem__(self, key: Any, value: Any) -> None:
        if key == _ACTIVE or key == _PENDING:
            old = dict.get(self, key)
            dict.__setitem__(self, key, value)
            interp = self._e6observe
            if interp is not None and old != value:
                interp.on_write(self, key, old, value)
        else:
            dict.__setitem__(self, key, value)


class StrategyCacheHook(Hook):
    """Swaps the connector's cache for an :class:`ObservedCache`; uninstall puts the original
    dict object back, holding the cache's current contents."""

    name = "strategy_cache"

    def __init__(self) -> None:
        super().__init__()
        #: (the connector module, its own dict, ours) while installed.
        self.swapped: Optional[tuple[Any, dict[str, Any], ObservedCache]] = None

    def apply(self, ctx: HookContext) -> bool:
        from e6data_python_connector import e6data_grpc as g

        recorder = ctx.recorder
        lock = getattr(g, "_strategy_lock", None)
        original = getattr(g, "_local_strategy_cache", None)
        if lock is None or not isinstance(original, dict) or not hasattr(g, "_get_shared_strategy"):
            return False
        interp = _Interpreter(recorder)
        with lock:
            original = g._local_strategy_cache
            if isinstance(original, ObservedCache):  # left over by a failed uninstall: adopt it
                ours = original
                original = dict(ours)
            else:
                ours = ObservedCache(original)
            ours._e6observe = None
            g._local_strategy_cache = ours
            if g._get_shared_strategy() is not ours:
                # Connector 2.2.6-2.3.8 keeps the state in a multiprocessing Manager: unsupported.
                g._local_strategy_cache = original
                return False
            # What the connector already knows when we arrive is reported as learned now.
            active = dict.get(ours, _ACTIVE)
            if active in COLOURS:
                interp.known = active
                recorder.detected(active)
            pending = dict.get(ours, _PENDING)
            if pending in COLOURS and pending != active:
                recorder.announced(pending)
            ours._e6observe = interp
        self.swapped = (g, original, ours)
        return True

    def removed(self, ctx: HookContext) -> None:
        swapped, self.swapped = self.swapped, None
        if swapped is None:
            return
        g, original, ours = swapped
        ours._e6observe = None  # stale references (a method's local) stop reporting at once
        with g._strategy_lock:
            if g._local_strategy_cache is ours:
                original.clear()
                original.update(dict(ours))
                g._local_strategy_cache = original


HOOK = StrategyCacheHook()


def note_observed(to: str) -> None:
    """The watcher counted a switch to ``to`` that no write reported (cause ``observed``): make
    it the colour this hook knows, so the connector's next write of ``to`` is not counted again."""
    inst = HOOK.swapped
    interp = inst[2]._e6observe if inst is not None else None
    if interp is not None and to in COLOURS:
        with interp._lock:
            interp.known = to


def reporting() -> bool:
    """True while the hook is installed and reporting cache A's writes (for the watcher)."""
    cache = installed_cache()
    return cache is not None and cache._e6observe is not None


def known_strategy() -> Optional[str]:
    """The strategy label this hook last saw cache A hold (None before the first, or not
    installed): the watcher's reference for "a switch nobody reported"."""
    cache = installed_cache()
    interp = cache._e6observe if cache is not None else None
    return interp.known if interp is not None else None


def installed_cache() -> Optional[ObservedCache]:
    """The cache object installed in the connector, or None (for tests and the watcher)."""
    inst = HOOK.swapped
    return inst[2] if inst is not None else None
