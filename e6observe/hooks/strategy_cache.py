"""Strategy-cache hook: every write to the connector's blue/green state becomes an event.

The sync connector (2.3.9+) keeps its process-wide blue/green state in one module dict,
``e6data_grpc._local_strategy_cache`` ("cache A"), and every writer reaches it through
``_get_shared_strategy()``, which reads the module global on every call. Only a handful of
module functions ever write ``active_strategy`` or ``pending_strategy`` (``_set_active_strategy``,
``_set_pending_strategy``, ``_apply_pending_strategy``, ``_clear_strategy_cache``, and
``_finish_query_cleanup`` in 3.0.x); none of them runs on a query's usual path, while the
connector reads the cache about twenty times per query and writes its query map twice.

So the cache itself stays the connector's plain ``dict`` (a ``dict`` subclass there would cost
every query ~16 000 instructions, ~1/3 of e6observe's whole sync cost, measured with callgrind:
Python 3.11's specialised dict opcodes and method calls only take exact dicts, and the query-map
writes would go through a Python ``__setitem__``). Instead, at install time, the module's
functions that store either key are found by reading their bytecode (a ``STORE_SUBSCR`` of that
constant key) and replaced by copies of themselves whose one difference is the name their
``_get_shared_strategy()`` call looks up: the copy gets the same dict wrapped in a
:class:`_WriteView`, whose ``__setitem__`` reports strategy writes. The connector's own code runs,
under its own lock, in its own order; uninstall puts the originals back. When a connector's
writers cannot be found that way (a writer that reaches the cache by another name), the hook
falls back to replacing the global with :class:`ObservedCache`, a ``dict`` subclass reporting the
same writes (correct, at the cost above); the cluster manager's cache (``hooks/cluster.py``) uses
it too.

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

import dis
import threading
from types import CodeType, FunctionType
from typing import Any, Callable, Optional

from .._colours import COLOURS
from .._safe import record_internal_error
from ..recorder import Recorder, norm_strategy
from . import Hook, HookContext

_ACTIVE = "active_strategy"
_PENDING = "pending_strategy"
_QUERY_MAP = "query_strategy_map"


class _Interpreter:
    """Turns observed cache writes into recorder events. One per installation."""

    __slots__ = ("rec", "known", "_lock", "live")

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        #: False once uninstalled: a writer copy still running then reports nothing.
        self.live = True
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


class _WriteView:
    """What a writer copy gets from its ``_get_shared_strategy()``: the connector's own cache for
    every read and write, with writes of ``active_strategy``/``pending_strategy`` reported."""

    __slots__ = ("_cache", "_interp")

    def __init__(self, cache: dict[str, Any], interp: _Interpreter) -> None:
        self._cache = cache
        self._interp = interp

    def __setitem__(self, key: Any, value: Any) -> None:
        cache = self._cache
        if key == _ACTIVE or key == _PENDING:
            old = cache.get(key)
            cache[key] = value
            interp = self._interp
            if interp.live and old != value:
                interp.on_write(cache, key, old, value)
        else:
            cache[key] = value

    def __getitem__(self, key: Any) -> Any:
        return self._cache[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._cache

    def get(self, key: Any, default: Any = None) -> Any:
        return self._cache.get(key, default)

    def __getattr__(self, name: str) -> Any:  # pop(), setdefault(), ...: the dict's own (no report)
        return getattr(self._cache, name)


#: The connector's accessor, and the module global a writer copy calls instead.
_ACCESSOR = "_get_shared_strategy"
_VIEW_GLOBAL = "_e6observe_strategy_writes"
_KEYS = frozenset((_ACTIVE, _PENDING))


_LOAD_CONST = dis.opmap["LOAD_CONST"]
_STORE_SUBSCR = dis.opmap["STORE_SUBSCR"]
_EXTENDED_ARG = dis.opmap["EXTENDED_ARG"]
_CACHE = dis.opmap.get("CACHE", -1)  # 3.11+: inline cache entries between instructions


def _stores_strategy(code: CodeType) -> bool:
    """True if ``code`` (or a function nested in it) stores ``x["active_strategy"]`` or
    ``x["pending_strategy"]``: a ``STORE_SUBSCR`` right after loading that constant key. Read
    from the raw bytecode, and only in code holding one of the keys as a constant (a few hundred
    microseconds for the whole connector module; ``dis.get_instructions`` takes ~10 ms)."""
    consts = code.co_consts
    keys = {i for i, c in enumerate(consts) if type(c) is str and c in _KEYS}
    if keys:
        raw = code.co_code
        ext = 0
        loaded: Optional[int] = None  # the constant the previous instruction loaded
        for i in range(0, len(raw), 2):
            op = raw[i]
            if op == _CACHE:
                continue
            arg = raw[i + 1] | ext
            if op == _EXTENDED_ARG:
                ext = arg << 8
                continue
            ext = 0
            if op == _STORE_SUBSCR and loaded in keys:
                return True
            loaded = arg if op == _LOAD_CONST else None
    return any(_stores_strategy(c) for c in consts if isinstance(c, CodeType))


def _accessor_only_as_global(code: CodeType) -> bool:
    """True if ``_get_shared_strategy`` is used in ``code`` (and nested code) only as a global
    name that is called, so renaming it in ``co_names`` changes nothing else."""
    for ins in dis.get_instructions(code):
        if ins.argval == _ACCESSOR and ins.opname != "LOAD_GLOBAL":
            return False
    return all(_accessor_only_as_global(c) for c in code.co_consts if isinstance(c, CodeType))


def _calls_accessor(code: CodeType) -> bool:
    return _ACCESSOR in code.co_names or any(
        _calls_accessor(c) for c in code.co_consts if isinstance(c, CodeType)
    )


def _renamed(code: CodeType) -> CodeType:
    names = tuple(_VIEW_GLOBAL if n == _ACCESSOR else n for n in code.co_names)
    consts = tuple(_renamed(c) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.replace(co_names=names, co_consts=consts)


def strategy_writers(module: Any) -> Optional[dict[str, FunctionType]]:
    """The module-level functions of ``module`` that store a strategy key, by name - or None if
    some of them do not reach the cache only through ``_get_shared_strategy()``, or a method of
    one of its classes stores one (those cannot be redirected: the hook swaps the cache instead)."""
    out: dict[str, FunctionType] = {}
    for name, fn in list(vars(module).items()):
        if isinstance(fn, type) and fn.__module__ == module.__name__:
            for attr in list(vars(fn).values()):
                f = getattr(attr, "__func__", attr)  # staticmethod, classmethod or function
                if type(f) is FunctionType and _stores_strategy(f.__code__):
                    return None
            continue
        inner = _innermost(fn)
        if inner is not fn and type(inner) is FunctionType and inner.__module__ == module.__name__:
            if _stores_strategy(inner.__code__):
                return None  # a writer someone else wrapped: only swapping the cache sees it
        if type(fn) is not FunctionType or fn.__module__ != module.__name__:
            continue
        code = fn.__code__
        if not _stores_strategy(code):
            continue
        if not _calls_accessor(code) or not _accessor_only_as_global(code):
            return None
        out[name] = fn
    return out or None


def _innermost(fn: Any) -> Any:
    """``fn`` without its wrappers (``__wrapped__``, at most 8 deep)."""
    for _ in range(8):
        inner = getattr(fn, "__wrapped__", None) if callable(fn) else None
        if inner is None:
            break
        fn = inner
    return fn


def _writer_copy(fn: FunctionType) -> FunctionType:
    """``fn`` with its ``_get_shared_strategy`` global looked up as ``_e6observe_strategy_writes``:
    the same code, defaults, closure and module globals."""
    new = FunctionType(_renamed(fn.__code__), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__ = fn.__qualname__
    new.__doc__ = fn.__doc__
    new.__dict__.update(fn.__dict__)
    new.__wrapped__ = fn  # type: ignore[attr-defined]
    return new


class _Installed:
    """What one installation changed: the interpreter, and in swap mode the two dicts."""

    __slots__ = ("g", "interp", "original", "ours")

    def __init__(
        self, g: Any, interp: _Interpreter, original: Optional[dict[str, Any]], ours: Optional[ObservedCache]
    ) -> None:
        self.g = g
        self.interp = interp
        self.original = original
        self.ours = ours


class StrategyCacheHook(Hook):
    """Redirects the connector's strategy writers to a reporting view of its cache (or, when
    they cannot be found, swaps the cache for an :class:`ObservedCache`); uninstall puts back the
    original functions (or the original dict object, holding the cache's current contents)."""

    name = "strategy_cache"

    def __init__(self) -> None:
        super().__init__()
        self.state: Optional[_Installed] = None

    def apply(self, ctx: HookContext) -> bool:
        from e6data_python_connector import e6data_grpc as g

        recorder = ctx.recorder
        lock = getattr(g, "_strategy_lock", None)
        original = getattr(g, "_local_strategy_cache", None)
        accessor = getattr(g, _ACCESSOR, None)
        if lock is None or not isinstance(original, dict) or accessor is None:
            return False
        interp = _Interpreter(recorder)
        writers = strategy_writers(g)
        with lock:
            original = g._local_strategy_cache
            if isinstance(original, ObservedCache):  # left over by a failed uninstall: adopt it
                original._e6observe = None
                original = g._local_strategy_cache = dict(original)
            if g._get_shared_strategy() is not original:
                # Connector 2.2.6-2.3.8 keeps the state in a multiprocessing Manager: unsupported.
                return False
            ours: Optional[ObservedCache] = None
            if writers is None:
                ours = ObservedCache(original)
                ours._e6observe = None
                g._local_strategy_cache = ours
            # What the connector already knows when we arrive is reported as learned now.
            state = original if ours is None else ours
            active = dict.get(state, _ACTIVE)
            if active in COLOURS:
                interp.known = active
                recorder.detected(active)
            pending = dict.get(state, _PENDING)
            if pending in COLOURS and pending != active:
                recorder.announced(pending)
            if ours is not None:
                ours._e6observe = interp
            else:
                assert writers is not None

                def view(accessor: Callable[[], Any] = accessor) -> Any:
                    cache = accessor()
                    return _WriteView(cache, interp) if type(cache) is dict else cache

                # Not one of the patches: uninstall rebinds it to the plain accessor instead of
                # deleting it, so a copy someone still holds keeps working (unreported).
                setattr(g, _VIEW_GLOBAL, view)
                for name, fn in writers.items():
                    self.patches.replace(g, name, _writer_copy(fn))
        self.state = _Installed(g, interp, original if ours is not None else None, ours)
        return True

    def removed(self, ctx: HookContext) -> None:
        inst, self.state = self.state, None
        if inst is None:
            return
        inst.interp.live = False  # a writer copy still running, or a stale reference, stops reporting
        ours, original = inst.ours, inst.original
        if ours is None or original is None:
            # The writers were put back with the other patches; a copy still held somewhere
            # finds the connector's own accessor under the name it calls.
            accessor = getattr(inst.g, _ACCESSOR, None)
            if accessor is not None:
                setattr(inst.g, _VIEW_GLOBAL, accessor)
            return
        ours._e6observe = None
        g = inst.g
        with g._strategy_lock:
            if g._local_strategy_cache is ours:
                original.clear()
                original.update(dict(ours))
                g._local_strategy_cache = original


HOOK = StrategyCacheHook()


def _interp() -> Optional[_Interpreter]:
    inst = HOOK.state
    return inst.interp if inst is not None and inst.interp.live else None


def note_observed(to: str) -> None:
    """The watcher counted a switch to ``to`` that no write reported (cause ``observed``): make
    it the colour this hook knows, so the connector's next write of ``to`` is not counted again."""
    interp = _interp()
    if interp is not None and to in COLOURS:
        with interp._lock:
            interp.known = to


def reporting() -> bool:
    """True while the hook is installed and reporting cache A's writes (for the watcher)."""
    return _interp() is not None


def known_strategy() -> Optional[str]:
    """The strategy label this hook last saw cache A hold (None before the first, or not
    installed): the watcher's reference for "a switch nobody reported"."""
    interp = _interp()
    return interp.known if interp is not None else None


def installed_cache() -> Optional[ObservedCache]:
    """The :class:`ObservedCache` installed in the connector in swap mode, else None (for tests)."""
    inst = HOOK.state
    return inst.ours if inst is not None else None
