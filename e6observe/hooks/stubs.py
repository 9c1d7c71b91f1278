"""What the RPC hooks share: per-method timers, a stub's wrapping and unwrapping, the strategy of
a call, and the done-callback that times a ``grpc.aio`` call.

The sync channel hook (``channel.py``), the async one (``aio.py``) and the cluster manager's
channel (``cluster.py``) each wrap a stub's unary multi-callables with a wrapper of their own
shape (the sync one inlines its fast path); everything around the wrapper is here, once:

* :class:`Timer` - per method, shared by every stub of an installation (``ctx.timers``): the
  histogram child for OK per strategy value, cached; failures observed under their code, a
  ``status: 456`` reported as a mismatch, a ``status: 503`` as the cluster seen suspended;
* :func:`wrap_stub` / :func:`unwrap_stub` - a stub is marked with the installation's token, and
  a wrapper is recognised by :data:`WRAPPER` (its original is ``__wrapped__``);
* :func:`aio_call_done` - reads the finished ``grpc.aio`` call's status without awaiting it.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, Callable, Optional

import grpc

from .._safe import record_internal_error
from ..recorder import FOLD_AT, Histogram, Recorder, norm_code, norm_method, norm_strategy
from . import MISMATCH_TEXT, HookContext

#: What a suspended cluster answers (``UNAVAILABLE``); the connector's auto-resume acts on it.
SUSPENDED_TEXT = "status: 503"
#: Attribute set on an instrumented stub: the installation's token.
MARK = "_e6observe_token"
#: Attribute set (True) on every wrapper this package puts on a stub.
WRAPPER = "_e6observe_wrapper"
_COMPONENT = "hook.channel"
#: Distinct raw strategy values whose histogram child is cached per method; beyond this (only a
#: hostile server could cause it) values are normalised on every call instead.
CACHE_LIMIT = 8
_perf = time.perf_counter
_OK = grpc.StatusCode.OK


def _never() -> bool:
    return False


def strategy_from(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``strategy`` header value of a call, or None. Never raises."""
    md = kwargs.get("metadata") if kwargs else None
    if md is None and len(args) > 1:
        md = args[1]  # (request, timeout, metadata, ...) passed positionally
    return strategy_in(md) if md else None


def strategy_in(md: Any) -> Any:
    """The ``strategy`` value among the metadata pairs ``md``, or None. Never raises."""
    try:
        for k, v in md:
            if k == "strategy":
                return v
    except Exception:
        return None
    return None


class Timer:
    """Per-method timing state, shared by every stub (sync or async) of one installation."""

    __slots__ = ("rec", "method", "ok", "suppressed")

    def __init__(self, rec: Recorder, method: str, suppressed: Callable[[], bool] = _never) -> None:
        self.rec = rec
        self.method = method
        #: raw strategy header value -> the OK child for it.
        self.ok: dict[Any, Histogram] = {}
        #: True inside OpenTelemetry's ``suppress_instrumentation()``: a failure's duration is
        #: not recorded (a 456 is still reported: it moves the strategy state).
        self.suppressed = suppressed

    def ok_child(self, s: Any) -> Histogram:
        h = self.rec.rpc_histogram(self.method, norm_strategy(s), "OK")
        if len(self.ok) < CACHE_LIMIT and (s is None or isinstance(s, str)):
            self.ok[s] = h
        return h

    def observe_ok(self, s: Any, seconds: float) -> None:
        """An OK call (what the fast paths inline). Contained."""
        try:
            self.ok[s].observe(seconds)
        except Exception:
            self.ok_slow(s, seconds)

    def ok_slow(self, s: Any, seconds: float) -> None:
        """An OK call whose child is not cached yet (first call per header value). Contained."""
        try:
            self.ok_child(s).observe(seconds)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)

    def failed(self, code: Any, details: Any, seconds: float, s: Any) -> None:
        try:
            rec = self.rec
            strategy = norm_strategy(s)
            cname = norm_code(code)
            if cname == "UNKNOWN" and isinstance(details, str) and MISMATCH_TEXT in details:
                rec.mismatch(strategy, self.method)
            elif cname == "UNAVAILABLE" and isinstance(details, str) and SUSPENDED_TEXT in details:
                rec.cluster_status_seen("suspended", self.method, engine=True)
            if self.suppressed():
                return
            rec.rpc_histogram(self.method, strategy, cname).observe(seconds)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)

    def failed_exc(self, exc: BaseException, seconds: float, s: Any) -> None:
        try:
            code = exc.code()  # type: ignore[attr-defined]
            details = exc.details()  # type: ignore[attr-defined]
        except Exception:
            code, details = None, None
        self.failed(code, details, seconds, s)


def timer_for(ctx: HookContext, method: str) -> Timer:
    """The installation's timer for ``method`` (one per method, shared by every stub)."""
    timer = ctx.timers.get(method)
    if timer is None:
        timer = ctx.timers.setdefault(method, Timer(ctx.recorder, method, ctx.suppressed))
    return timer  # type: ignore[no-any-return]


Wrap = Callable[[Any, Timer], Callable[..., Any]]


def wrap_stub(stub: Any, ctx: HookContext, kind: type, wrap: Wrap, stubs: weakref.WeakSet[Any]) -> bool:
    """Replace each multi-callable of class ``kind`` on ``stub`` by ``wrap(mc, timer)``, mark the
    stub and remember it in ``stubs`` (for uninstall). Idempotent; True if it changed."""
    if stub is None or getattr(stub, MARK, None) is ctx.token:
        return False
    attrs = vars(stub)
    for name, mc in list(attrs.items()):
        if isinstance(mc, kind):
            attrs[name] = wrap(mc, timer_for(ctx, norm_method(name)))
    attrs[MARK] = ctx.token
    stubs.add(stub)
    if not ctx.live:
        # uninstall() ran while we were wrapping (it clears ``live`` before it unwraps what is in
        # ``stubs``, and we added to ``stubs`` before looking): it may have missed this stub.
        unwrap_stub(stub)
        return False
    return True


def plain_call(mc: Any) -> bool:
    """True if ``type(mc).__call__`` is a plain Python function: then ``type(mc).__call__(mc,
    ...)`` is ``mc(...)`` with the special-method lookup written out, which a Python-level call
    runs without entering a second interpreter loop from C."""
    import inspect
    import types

    try:
        return isinstance(inspect.getattr_static(type(mc), "__call__", None), types.FunctionType)
    except Exception:
        return False


def mark_wrapper(wrapper: Callable[..., Any], original: Any, method: str) -> Callable[..., Any]:
    """Make ``wrapper`` recognisable to :func:`unwrap_stub`, its original ``__wrapped__``."""
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    wrapper.__name__ = method
    setattr(wrapper, WRAPPER, True)
    return wrapper


def unwrap_stub(stub: Any) -> None:
    """Put the original multi-callables back on ``stub`` and remove its mark."""
    attrs = vars(stub)
    for name, value in list(attrs.items()):
        if getattr(value, WRAPPER, False) is True:
            attrs[name] = value.__wrapped__
    attrs.pop(MARK, None)


def unwrap_all(stubs: weakref.WeakSet[Any], component: str) -> None:
    """Unwrap every stub still alive in ``stubs`` (uninstall); each failure contained."""
    for stub in list(stubs):
        try:
            unwrap_stub(stub)
        except Exception as exc:
            record_internal_error(component, exc)
    stubs.clear()


_codes: Optional[dict[Any, Any]] = None


def aio_status_codes() -> dict[Any, Any]:
    """grpc's Cython status code -> ``grpc.StatusCode`` (read once)."""
    global _codes
    if _codes is None:
        from grpc import _common

        _codes = _common.CYGRPC_STATUS_CODE_TO_STATUS_CODE
    return _codes


def aio_call_done(
    timer: Timer, interp: Any, s: Any, t0: float, codes: dict[Any, Any], component: str, call: Any
) -> None:
    """Done-callback of a timed ``grpc.aio`` call (bound with ``functools.partial``): the
    finished call's status, read without awaiting. OK: observed (inlined: one list append), and
    ``interp.confirmed(s)`` while ``interp.known`` is None (the async API's first colour);
    otherwise :meth:`Timer.failed`. Contained."""
    dt = _perf() - t0
    try:
        cy = call._cython_call
        if cy.is_locally_cancelled():
            timer.failed("CANCELLED", None, dt, s)
            return
        status = cy._status
        code = codes.get(status.code())
        if code is _OK:  # an identity test: ``code.name`` would be two Python calls (enum)
            h = timer.ok.get(s)
            if h is None:
                h = timer.ok_child(s)
            p = h.pending  # h.observe(dt), inlined (the async hot path: 6 calls a query)
            p.append(dt)
            if len(p) >= FOLD_AT:
                h.fold()
            if interp is not None and interp.known is None:
                interp.confirmed(s)
        else:
            timer.failed(code, status.details(), dt, s)
    except Exception as exc:
        record_internal_error(component, exc)


__all__ = [
    "MARK",
    "WRAPPER",
    "SUSPENDED_TEXT",
    "Timer",
    "timer_for",
    "strategy_from",
    "wrap_stub",
    "unwrap_stub",
    "unwrap_all",
    "mark_wrapper",
    "aio_call_done",
    "aio_status_codes",
]
