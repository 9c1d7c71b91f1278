"""Connection-pool hook: the connector's ``ConnectionPool`` and ``AsyncConnectionPool``.

Modelled on OpenTelemetry's ``db.client.connection.*`` conventions (names in ``metrics.py``):

* ``e6data_pool_connections{pool,state}`` (``db.client.connection.count``), ``state`` idle/used;
* ``e6data_pool_max_connections{pool}`` (``max_size + max_overflow``);
* ``e6data_pool_pending_requests{pool}``: callers inside ``get_connection`` right now;
* ``e6data_pool_wait_time_seconds{pool}``: time ``get_connection`` took (including any
  connection it had to create, as the convention defines wait time);
* ``e6data_pool_create_time_seconds{pool}``: time to create one pooled connection (sync pool).

The two timings are thin wrappers recording into pre-bound recorder histograms. Counts are read
from the pools when a scrape or an OpenTelemetry reader asks, from plain attributes, without
the pool's lock: ``ConnectionPool.get_statistics()`` takes the pool lock, which the pool also
holds across a pre-ping RPC, and its ``created_connections`` over-counts. For the sync pool,
size is ``len(_all_connections)``, idle is the queue's size and used is the difference.
``AsyncConnectionPool.get_statistics()`` may only run on the pool's own event loop, so its
ledger is copied instead (a single C-level copy under the GIL).

Pools are kept in a weak map (never kept alive by e6observe) and named ``pool-<n>`` in the order
this process first saw them; past ``MAX_POOL_NAMES`` they share ``pool-other``. An application
may name a pool itself with :func:`name_pool` (``[A-Za-z0-9_.-]``, up to 32 characters).
"""

from __future__ import annotations

import functools
import re
import threading
import time
import weakref
from typing import Any, Callable, Optional

from .. import _fork
from .. import metrics as M
from .._safe import contain, record_internal_error
from ..recorder import FOLD_AT
from . import Hook, HookContext

#: Distinct pool names per process; the label set stays bounded however many pools come and go.
MAX_POOL_NAMES = 32
OTHER = "pool-other"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")


class _PoolInfo:
    __slots__ = ("name", "pending", "lock", "wait_hist", "create_hist", "kind", "__weakref__")

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind  # "sync" | "aio"
        self.pending = 0
        self.lock = threading.Lock()
        self.wait_hist: Any = None
        self.create_hist: Any = None


_pools: weakref.WeakKeyDictionary[Any, _PoolInfo] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()
#: The async wrapper's lookup (once per query): ``id(pool)`` -> (its record, a weak reference to
#: the pool whose callback drops the entry when the pool is collected - before its id can be
#: reused). A plain dict get instead of ``WeakKeyDictionary.get`` (a Python frame and a new weak
#: reference on every call) and ``_info``.
_aio_infos: dict[int, tuple[_PoolInfo, Any]] = {}
_names_used: set[str] = set()
_counter = 0


def _bind(info: _PoolInfo) -> None:
    ctx = HOOK.ctx
    if ctx is None:
        return
    rec = ctx.recorder
    info.wait_hist = rec.family(M.POOL_WAIT_TIME).histogram(info.name)
    info.create_hist = rec.family(M.POOL_CREATE_TIME).histogram(info.name)


def _info(pool: Any, kind: str) -> _PoolInfo:
    """The pool's record, created (and named) on first sight."""
    global _counter
    info = _pools.get(pool)
    if info is not None:
        return info
    with _pools_lock:
        info = _pools.get(pool)
        if info is None:
            if len(_names_used) < MAX_POOL_NAMES:
                _counter += 1
                name = f"pool-{_counter}"
                _names_used.add(name)
            else:
                name = OTHER
            info = _PoolInfo(name, kind)
            _bind(info)
            _pools[pool] = info
    _fork.register("locks", reset_after_fork, "fork.pool")  # once a pool is known
    return info


def name_pool(pool: Any, name: str) -> None:
    """Label ``pool``'s metrics with ``name`` instead of ``pool-<n>``.

    ``name`` must match ``[A-Za-z0-9_.-]{1,32}``; at most ``MAX_POOL_NAMES`` distinct names per
    process (ValueError otherwise). Call it right after creating the pool: observations already
    made stay under the old name.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError("pool name must be 1-32 characters of A-Z a-z 0-9 _ . -")
    kind = "aio" if type(pool).__name__ == "AsyncConnectionPool" else "sync"
    info = _info(pool, kind)
    with _pools_lock:
        if name not in _names_used and len(_names_used) >= MAX_POOL_NAMES:
            raise ValueError(f"at most {MAX_POOL_NAMES} pool names per process")
        _names_used.add(name)
        info.name = name
        _bind(info)


def _reset_names_for_tests() -> None:
    """Forget names and pools (tests only: names are otherwise per process, like pids)."""
    global _counter
    with _pools_lock:
        _pools.clear()
        _aio_infos.clear()
        _names_used.clear()
        _counter = 0


def pool_names() -> list[str]:
    """Names of the pools alive in this process."""
    with _pools_lock:
        return sorted({i.name for i in list(_pools.values())})


# --- wrappers ----------------------------------------------------------------------------------


def _wait_begins(pool: Any, kind: str) -> Optional[_PoolInfo]:
    """A caller enters ``get_connection``: one more pending request. Contained."""
    info: Optional[_PoolInfo] = None
    with contain("hook.pool"):
        info = _info(pool, kind)
        with info.lock:
            info.pending += 1
    return info


def _wait_ends(info: Optional[_PoolInfo], t0: float) -> None:
    """The caller leaves ``get_connection`` (with a connection, an error or a timeout: a caller
    that gave up still waited). Contained."""
    if info is not None:
        with contain("hook.pool"):
            with info.lock:
                info.pending -= 1
            if info.wait_hist is not None:
                info.wait_hist.observe(time.perf_counter() - t0)


def _timed_get(original: Callable[..., Any], kind: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_connection(self: Any, *args: Any, **kwargs: Any) -> Any:
        info = _wait_begins(self, kind)
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            _wait_ends(info, t0)

    return get_connection


def _forget_aio(key: int, ref: Any) -> None:
    e = _aio_infos.get(key)
    if e is not None and e[1] is ref:
        del _aio_infos[key]


def _aio_info(pool: Any) -> _PoolInfo:
    """The async pool's record (:func:`_info`), remembered in ``_aio_infos``."""
    info = _info(pool, "aio")
    key = id(pool)
    _aio_infos[key] = (info, weakref.ref(pool, functools.partial(_forget_aio, key)))
    return info


def _timed_get_async(original: Callable[..., Any]) -> Callable[..., Any]:
    perf = time.perf_counter
    infos = _aio_infos

    # _wait_begins / _wait_ends inlined, ``contain`` as try/except: 64 tasks sharing 16 pooled
    # connections run this once per query on one event loop (issue 17: 9 calls per query less).
    @functools.wraps(original)
    async def get_connection(self: Any, *args: Any, **kwargs: Any) -> Any:
        info: Optional[_PoolInfo] = None
        try:
            e = infos.get(id(self))
            info = e[0] if e is not None else _aio_info(self)
            with info.lock:
                info.pending += 1
        except Exception as exc:
            record_internal_error("hook.pool", exc)
        t0 = perf()
        try:
            if args or kwargs:
                return await original(self, *args, **kwargs)
            return await original(self)  # the usual call: no new tuple and dict
        finally:
            if info is not None:
                try:
                    with info.lock:
                        info.pending -= 1
                    h = info.wait_hist
                    if h is not None:
                        p = h.pending  # h.observe(...), inlined
                        p.append(perf() - t0)
                        if len(p) >= FOLD_AT:
                            h.fold()
                except Exception as exc:
                    record_internal_error("hook.pool", exc)

    return get_connection


def _timed_create(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _create_connection(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        pooled = original(self, *args, **kwargs)
        # Only successful creations: a failure's time says nothing about creating connections.
        with contain("hook.pool"):
            info = _info(self, "sync")
            if info.create_hist is not None:
                info.create_hist.observe(time.perf_counter() - t0)
            from ..connections import track_connection

            track_connection(getattr(pooled, "connection", None))
        return pooled

    return _create_connection


def _registering_init(original: Callable[..., Any], kind: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # Named before the original runs: the sync pool creates min_size connections inside
        # __init__, and their create times should carry this pool's name.
        with contain("hook.pool"):
            _info(self, kind)
        original(self, *args, **kwargs)

    return __init__


def _import_class(module: str, name: str) -> Optional[type]:
    try:
        mod = __import__(module, fromlist=[name])
    except Exception:
        return None
    cls = getattr(mod, name, None)
    return cls if isinstance(cls, type) else None


_AIO_POOL = "e6data_python_connector.async_connection_pool"


class PoolHook(Hook):
    """Patches ``ConnectionPool`` now and ``AsyncConnectionPool`` when the application imports
    it (absent on 2.3.x, below Python 3.11 or without the connector's async extra; importing it
    here would load the connector's whole async API into processes that never use it). Pools
    created earlier are picked up when used."""

    name = "pool"

    def apply(self, ctx: HookContext) -> bool:
        sync_cls = _import_class("e6data_python_connector.connection_pool", "ConnectionPool")
        if sync_cls is not None:
            self._patch(sync_cls, "__init__", lambda o: _registering_init(o, "sync"))
            self._patch(sync_cls, "get_connection", lambda o: _timed_get(o, "sync"))
            self._patch(sync_cls, "_create_connection", _timed_create)
        with _pools_lock:
            for info in list(_pools.values()):
                _bind(info)
        self.defer(ctx, _AIO_POOL, self._apply_aio)
        return True

    def _apply_aio(self) -> bool:
        aio_cls = _import_class(_AIO_POOL, "AsyncConnectionPool")
        if aio_cls is None or self.patches.patched(aio_cls):
            return False
        self._patch(aio_cls, "__init__", lambda o: _registering_init(o, "aio"))
        self._patch(aio_cls, "get_connection", _timed_get_async)
        return True

    def _patch(self, cls: type, attr: str, factory: Callable[[Any], Any]) -> None:
        original = cls.__dict__.get(attr)
        if original is not None:
            self.patches.replace(cls, attr, factory(original))

    def removed(self, ctx: HookContext) -> None:
        # A wrapper someone wrapped over stays in place: it stops recording (histograms unbound).
        with _pools_lock:
            for info in list(_pools.values()):
                info.wait_hist = info.create_hist = None


HOOK = PoolHook()


def reset_after_fork() -> None:
    """Fresh locks in a forked child; the parent's waiters are not this process's."""
    global _pools_lock
    _pools_lock = threading.Lock()
    HOOK.reset_after_fork()
    for info in list(_pools.values()):
        info.lock = threading.Lock()
        info.pending = 0


# --- reading -----------------------------------------------------------------------------------


def _read_sync(pool: Any) -> Optional[tuple[int, int, int]]:
    """(idle, used, max) for a ConnectionPool, from attributes, without its lock."""
    size = len(pool._all_connections)
    idle = pool._pool.qsize()
    return idle, max(0, size - idle), int(pool.max_size) + int(pool.max_overflow)


def _read_aio(pool: Any) -> Optional[tuple[int, int, int]]:
    """(idle, used, max) for an AsyncConnectionPool, from a copy of its ledger."""
    slots = pool._ledger.slots
    for _ in range(3):
        try:
            states = tuple(slots.values())  # one C-level pass; no Python runs in between
            break
        except RuntimeError:  # changed size mid-copy (free-threaded builds): try again
            continue
    else:
        return None
    idle = sum(1 for s in states if s == "idle")
    return idle, len(states) - idle, int(pool.max_size) + int(pool.max_overflow)


def read_pools() -> dict[str, dict[str, int]]:
    """Per pool name: idle, used, max, pending — summed over pools sharing a name."""
    with _pools_lock:
        items = list(_pools.items())
    out: dict[str, dict[str, int]] = {}
    for pool, info in items:
        with contain("hook.pool.read"):
            row = _read_aio(pool) if info.kind == "aio" else _read_sync(pool)
            if row is None:
                continue
            agg = out.setdefault(info.name, {"idle": 0, "used": 0, "max": 0, "pending": 0})
            agg["idle"] += row[0]
            agg["used"] += row[1]
            agg["max"] += row[2]
            agg["pending"] += max(0, info.pending)
    return out


__all__ = ["HOOK", "PoolHook", "name_pool", "pool_names", "read_pools", "MAX_POOL_NAMES"]
