"""Hooks on the e6data connector: each module patches one surface and can undo it exactly.

The protocol (:class:`Hook`): every hook module holds one hook object, ``HOOK``, with its
context (:class:`HookContext`, shared by the hooks of one ``instrument()``), its
:class:`Patches`, and its deferred installs (:meth:`Hook.defer`: patch a module of the connector
once the application imports it). ``HOOK.install(ctx)`` applies it (False: not applicable to this
connector or Python) and ``HOOK.uninstall()`` undoes it: the original of every attribute it
replaced is put back, the very object (tests compare identities). A hook module defines its
subclass's ``apply(ctx)`` (what to patch, through ``self.patches`` and ``self.defer``) and, if it
changes more than attributes, ``removed(ctx)``.

Hook code never raises into the application: its own failures go through
:func:`e6observe._safe.record_internal_error`, and the connector's exceptions pass through as the
same object (the connector inspects the private ``_InactiveRpcError``).

Shared helpers for recognising the connector's two recovery errors live here.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Optional

from .. import _fork
from .._safe import record_internal_error
from ..recorder import Recorder

#: The text of a strategy-mismatch error (``StatusCode.UNKNOWN``). Sync password paths test it as
#: a substring, OAuth/async paths as the exact text; a substring test covers both.
MISMATCH_TEXT = "status: 456"
#: Part of the details of the engine's "session unknown / login refused" error (``INTERNAL``).
ACCESS_DENIED_TEXT = "Access denied"


def rpc_error_details(exc: BaseException) -> tuple[Optional[Any], str]:
    """``(code, details)`` of a gRPC error, or ``(None, "")`` for anything else. Never raises."""
    try:
        code = exc.code()  # type: ignore[attr-defined]
        details = exc.details()  # type: ignore[attr-defined]
    except Exception:
        return None, ""
    return code, details if isinstance(details, str) else ""


def is_mismatch(exc: Optional[BaseException]) -> bool:
    """True if ``exc`` is (or was raised from) a ``status: 456`` strategy-mismatch error.

    The async connector re-raises RPC errors as ``OperationalError`` *from* the gRPC error, so the
    cause chain is followed a few links.
    """
    for _ in range(4):
        if exc is None:
            return False
        code, details = rpc_error_details(exc)
        if code is not None:
            return getattr(code, "name", None) == "UNKNOWN" and MISMATCH_TEXT in details
        exc = exc.__cause__ or exc.__context__
    return False


def outcome_of(exc: BaseException) -> str:
    """How a query that was admitted ends on ``exc``: ``switch_interrupted`` for a 456 (a switch
    landed while it ran), else ``error``. Sync and async cursor hooks share it."""
    return "switch_interrupted" if is_mismatch(exc) else "error"


def retry_reason(exc: Optional[BaseException]) -> str:
    """The recorder's retry reason for the error that made the connector replay an operation.

    The branch the connector's ``re_auth`` takes: ``INTERNAL`` with "Access denied" first, then
    "status: 456" in the details *whatever the code* (it clears its cache and logs in again).
    """
    if exc is None:
        return "other"
    code, details = rpc_error_details(exc)
    if code is None:
        return "other"
    name = getattr(code, "name", None)
    if name == "INTERNAL" and ACCESS_DENIED_TEXT in details:
        return "access_denied"
    if MISMATCH_TEXT in details:
        return "mismatch"
    return "other"


_MISSING = object()


class HookContext:
    """What the installed hooks share: the recorder, options, the query tracer (or None).

    ``live`` turns every wrapper into a plain pass-through after ``uninstall()`` (a wrapper
    that some other tool wrapped over cannot be removed, but it must stop reporting).
    """

    __slots__ = (
        "recorder",
        "options",
        "tracer",
        "live",
        "token",
        "tls",
        "retrace",
        "track",
        "timers",
        "query_ok",
        "suppressed",
        "context_now",
        "_suppression_users",
        "_otel_watch",
    )

    def __init__(self, recorder: Recorder, options: Any = None, tracer: Any = None) -> None:
        self.recorder = recorder
        self.options = options
        self.tracer = tracer
        self.live = True
        #: Marks objects (stubs) instrumented by this installation.
        self.token = object()
        #: Per-thread hook state (the retry attempt of the current execute).
        self.tls = threading.local()
        #: While no tracer exists: a cheap callable that may find one set up later (or None).
        self.retrace: Optional[Any] = None
        #: ``connections.track_connection`` (open-connections gauge).
        self.track: Any = _track_connection_fn()
        #: Per-method timing state shared by every stub of this installation (channel hook).
        self.timers: dict[str, Any] = {}
        #: Strategy label -> its query-duration child for outcome ``ok`` (the common end of a
        #: query; sync and async cursor hooks).
        self.query_ok: dict[str, Any] = {}
        #: The globals of the hook modules whose hot paths read ``_suppressed``/``_ctx_now``
        #: (see :meth:`use_suppression`), set again when the OpenTelemetry API arrives.
        self._suppression_users: list[dict[str, Any]] = []
        self._otel_watch: Any = None
        #: True inside OpenTelemetry's ``suppress_instrumentation()``: no span, no measurement.
        self.suppressed: Callable[[], bool] = _never_suppressed
        #: The OpenTelemetry context as one C call: empty (falsy) means nothing is suppressed,
        #: so the hot paths test ``context_now() and suppressed()``.
        self.context_now: Callable[[], Any] = _EMPTY_CONTEXT
        if _OTEL_CONTEXT in sys.modules:
            self.suppressed = _suppression_check()
            self.context_now = _context_getter()
        else:
            # Nothing can be suppressed before the application imports the OpenTelemetry API,
            # and importing it here would add ~56 KiB to an application that never does: the
            # real checks are bound when it is imported.
            self._otel_watch = when_imported(_OTEL_CONTEXT, self._otel_context_imported)

    def use_suppression(self, module_globals: dict[str, Any]) -> None:
        """Set a hook module's ``_suppressed``/``_ctx_now`` globals (what its hot path calls) to
        this context's ``suppressed``/``context_now``: now, and again once the OpenTelemetry API
        is imported."""
        self._suppression_users.append(module_globals)
        self._bind_suppression(module_globals)

    def _bind_suppression(self, module_globals: dict[str, Any]) -> None:
        module_globals["_suppressed"] = self.suppressed
        module_globals["_ctx_now"] = self.context_now

    def _otel_context_imported(self) -> None:
        self._otel_watch = None
        if not self.live:
            return
        self.suppressed = _suppression_check()
        self.context_now = _context_getter()
        for timer in list(self.timers.values()):
            timer.suppressed = self.suppressed
        for module_globals in list(self._suppression_users):
            self._bind_suppression(module_globals)

    def close(self) -> None:
        """Stop waiting for the OpenTelemetry API (uninstrument)."""
        watch, self._otel_watch = self._otel_watch, None
        if watch is not None:
            watch.cancel()

    def current_tracer(self) -> Any:
        """The query tracer, looking (rate-limited) for a late global provider if none yet."""
        tracer = self.tracer
        if tracer is None and self.retrace is not None:
            tracer = self.retrace()
        return tracer


_OTEL_CONTEXT = "opentelemetry.context"
#: A C callable returning None: "the context is empty" while the API is not imported.
_EMPTY_CONTEXT: Callable[[], Any] = type(None)


def _never_suppressed() -> bool:
    return False


def _context_getter() -> Any:
    from .._otelctx import context_getter

    return context_getter()


def _suppression_check() -> Any:
    from .._otelctx import suppression_check

    return suppression_check()


def _track_connection_fn() -> Any:
    try:
        from ..connections import track_connection

        return track_connection
    except Exception:
        return lambda conn: None


class _ImportWatch:
    """A ``sys.meta_path`` finder that runs a callback right after one module's code has run
    (so a hook can wait for a module the application may never import, instead of importing
    it). It finds nothing itself: it asks the rest of ``sys.meta_path`` for the spec and wraps
    that spec's loader. Any failure of its own leaves the import to the normal machinery."""

    def __init__(self, name: str, callback: Any) -> None:
        self.name = name
        self.callback = callback
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name or getattr(self._busy, "on", False):
            return None
        try:
            import importlib.util

            self._busy.on = True
            try:
                spec = importlib.util.find_spec(fullname)
            finally:
                self._busy.on = False
            loader = getattr(spec, "loader", None)
            if spec is None or not hasattr(loader, "exec_module"):
                return None
            spec.loader = _AfterExec(loader, self)  # type: ignore[assignment]
            return spec
        except Exception:
            return None

    def cancel(self) -> None:
        """Stop watching (idempotent)."""
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass

    def fire(self) -> None:
        self.cancel()
        try:
            self.callback()
        except Exception as exc:
            record_internal_error("hook.deferred", exc)


class _AfterExec:
    """A loader that runs the watch's callback once the module's own code has run."""

    def __init__(self, loader: Any, watch: _ImportWatch) -> None:
        self._loader = loader
        self._watch = watch

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._watch.fire()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def when_imported(name: str, callback: Any) -> Optional[_ImportWatch]:
    """Call ``callback()`` once module ``name`` has been imported: now if it already is (then
    None is returned), else right after its import, in the importing thread (then the watch
    is returned; ``cancel()`` it to stop waiting). The callback's failures are contained."""
    if name in sys.modules:
        callback()
        return None
    watch = _ImportWatch(name, callback)
    sys.meta_path.insert(0, watch)
    return watch


class Patches:
    """Attribute replacements that can be undone exactly (original object put back)."""

    def __init__(self) -> None:
        self._items: list[tuple[Any, str, Any, Any]] = []

    def replace(self, owner: Any, name: str, new: Any) -> Any:
        """Set ``owner.name = new``; return the attribute the class itself held (or inherited,
        or None when there was none)."""
        original = owner.__dict__.get(name, _MISSING)
        current = getattr(owner, name, None) if original is _MISSING else original
        setattr(owner, name, new)
        self._items.append((owner, name, original, new))
        return current

    def restore(self) -> int:
        """Undo every replacement, newest first. One another tool wrapped over is left alone
        (dropping it would drop their wrapper; ours sees its context no longer live): returns
        how many were left so."""
        items, self._items = self._items, []
        left = 0
        for owner, name, original, new in reversed(items):
            if owner.__dict__.get(name, _MISSING) is not new:
                left += 1
                continue
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        return left

    def patched(self, owner: Any) -> bool:
        """True if some attribute of ``owner`` is replaced (and not restored)."""
        return any(o is owner for o, *_ in self._items)

    def __len__(self) -> int:
        return len(self._items)


#: Every hook object (one per module in ``hooks/``), for :func:`reset_after_fork`.
_HOOKS: list[Hook] = []


def reset_after_fork() -> None:
    """Fresh locks for every hook in a forked child."""
    for hook in list(_HOOKS):
        hook.reset_after_fork()


class Hook:
    """One hook on the connector: the protocol every module in ``hooks/`` follows.

    ``install(ctx)``, ``uninstall()`` and a deferred install's callback run under the hook's
    (re-entrant) lock, so an uninstall never interleaves with a late install. A subclass defines
    ``name`` (its failures are counted as ``hook.<name>``), :meth:`apply` and, when it changes
    more than class or module attributes, :meth:`removed`.
    """

    name = "hook"

    def __init__(self) -> None:
        #: The installation's context while installed (None otherwise).
        self.ctx: Optional[HookContext] = None
        self.patches = Patches()
        self._watches: list[_ImportWatch] = []
        self._lock = threading.RLock()
        _HOOKS.append(self)

    def reset_after_fork(self) -> None:
        """A fresh lock in a forked child (a thread of the parent may have held this one)."""
        self._lock = threading.RLock()

    @property
    def component(self) -> str:
        return "hook." + self.name

    def installed(self) -> bool:
        return self.ctx is not None

    def apply(self, ctx: HookContext) -> bool:
        """Patch the connector for ``ctx`` (through ``self.patches`` and :meth:`defer`). False:
        nothing applies to this connector or Python (what was patched so far is undone)."""
        raise NotImplementedError

    def removed(self, ctx: HookContext) -> None:
        """After the patches are restored: undo what is not an attribute (stubs, caches)."""

    def install(self, ctx: HookContext) -> bool:
        """Apply the hook (idempotent: True at once while installed). False if not applicable."""
        _fork.register("locks", reset_after_fork, "fork.hooks")  # once, whichever hook is first
        with self._lock:
            if self.ctx is not None:
                return True
            self.ctx = ctx
            try:
                ok = self.apply(ctx)
            except BaseException:
                self._undo(ctx)
                raise
            if not ok:
                self._undo(ctx)
            return ok

    def uninstall(self) -> None:
        """Stop waiting for modules, put back every original, undo the rest (idempotent)."""
        with self._lock:
            ctx = self.ctx
            if ctx is None:
                return
            ctx.live = False
            self._undo(ctx)

    def _undo(self, ctx: HookContext) -> None:
        for watch in self._watches:
            watch.cancel()
        self._watches.clear()
        self.ctx = None
        for _ in range(self.patches.restore()):
            # Someone wrapped over ours: theirs stays; ours passes through (ctx not live).
            record_internal_error(self.component + ".uninstall")
        try:
            self.removed(ctx)
        except Exception as exc:
            record_internal_error(self.component, exc)

    def defer(self, ctx: HookContext, module: str, apply: Callable[[], bool]) -> bool:
        """Run ``apply()`` once ``module`` (a connector module the application may never import)
        has been imported, while this installation is live: now if it is imported (its result
        is returned), else right after its import in the importing thread (True is returned).
        False when the module does not exist (nothing to wait for)."""
        if module in sys.modules:
            return apply()
        try:
            import importlib.util

            if importlib.util.find_spec(module) is None:
                return False
        except (ImportError, ValueError):
            return False

        def late() -> None:
            # Looked at before the lock too: a stale watch (its installation gone) must not wait
            # for a newer install(), which may itself be waiting for this very import.
            if self.ctx is not ctx or not ctx.live:
                return
            with self._lock:
                if self.ctx is not ctx or not ctx.live:
                    return  # uninstalled meanwhile
                try:
                    apply()
                except Exception as exc:
                    record_internal_error(self.component + ".deferred", exc)

        watch = when_imported(module, late)  # may run late() at once (imported meanwhile)
        if watch is not None:
            self._watches.append(watch)
        return True


class ImportedLater(Hook):
    """A hook whose own module is imported only once the connector module it patches is (the
    async hooks: about 0.06 MiB of start-up RSS in a process that never imports the connector's
    async API, issue 17). ``install(ctx)`` waits for ``trigger`` like :meth:`Hook.defer`; then
    ``module``'s ``HOOK`` is imported and installed with the same context, and uninstalled with
    this one. Named as that hook (its failures are counted under the same component)."""

    def __init__(self, name: str, module: str, trigger: str) -> None:
        super().__init__()
        self.name = name
        self.module = module
        self.trigger = trigger
        #: The real hook while it is installed.
        self.real: Optional[Hook] = None

    def apply(self, ctx: HookContext) -> bool:
        def now() -> bool:
            import importlib

            real: Hook = importlib.import_module(self.module).HOOK
            ok = real.install(ctx)
            self.real = real if ok else None
            return ok

        return self.defer(ctx, self.trigger, now)

    def removed(self, ctx: HookContext) -> None:
        real, self.real = self.real, None
        if real is not None:
            real.uninstall()


__all__ = [
    "ImportedLater",
    "Hook",
    "HookContext",
    "reset_after_fork",
    "Patches",
    "when_imported",
    "MISMATCH_TEXT",
    "ACCESS_DENIED_TEXT",
    "is_mismatch",
    "outcome_of",
    "retry_reason",
    "rpc_error_details",
]
