"""What e6observe shares with the OpenTelemetry API: its scope, schema URL and context keys.

* :data:`SCHEMA_URL` - the semantic-conventions version e6observe's names follow; every meter
  and tracer e6observe creates carries it (:func:`meter`, :func:`tracer`).
* :func:`suppression_check` - a callable telling whether the current context suppresses
  instrumentation (``opentelemetry.instrumentation.utils.suppress_instrumentation()``, which
  contrib instrumentations honour): the query and RPC hooks record nothing inside it.
* :func:`attach_span` / :func:`detach` - make a span current for the calls made under it, so
  other instrumentations' spans (``opentelemetry-instrumentation-grpc``) become its children
  (a deferred query's :class:`PendingSpan` is never made current);
  :func:`span_binding` - the same functions bound once (no import, no module lookup per call),
  for the query tracer's per-phase attach (issue 17).

Reading the suppression flag is on the hook's path (once per query and per RPC): the check
reads the API's context variable directly where the API keeps one (every supported version),
and falls back to ``context.get_value`` otherwise.
"""

from __future__ import annotations

import contextvars
from time import time_ns
from typing import Any, Callable, Optional

SCOPE = "e6observe"
#: Semantic conventions the attribute and metric names follow (see CHANGELOG.md for renames).
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
#: The key ``suppress_instrumentation()`` also sets, for instrumentations that predate the API's.
_PLAIN_KEY = "suppress_instrumentation"


class SpanBinding:
    """The context functions a query span needs, looked up once.

    ``current()`` is the current context; ``in_context(span, parent)`` a context with ``span``
    current (``trace.set_span_in_context``); ``attach(context)`` makes it current and returns the
    token that ``reset(token)`` takes back. Where the API keeps its context in a
    ``ContextVar`` (its default runtime context, every supported version) they are that
    variable's own ``get``/``set``/``reset`` - exactly what ``context.attach``/``detach`` call,
    without two Python frames each. ``reset`` may raise (a token from another context), as
    ``ContextVar.reset`` does: callers contain it, as ``context.detach`` would have logged it.
    """

    __slots__ = ("current", "in_context", "attach", "reset")

    def __init__(self) -> None:
        from opentelemetry import context as c
        from opentelemetry import trace

        self.in_context: Callable[..., Any] = trace.set_span_in_context
        var = getattr(getattr(c, "_RUNTIME_CONTEXT", None), "_current_context", None)
        if isinstance(var, contextvars.ContextVar):
            self.current: Callable[[], Any] = var.get
            self.attach: Callable[[Any], Any] = var.set
            self.reset: Callable[[Any], Any] = var.reset
        else:  # pragma: no cover - a runtime context other than the API's default
            self.current = c.get_current
            self.attach = c.attach
            self.reset = c.detach


_BINDING: Optional[SpanBinding] = None


class PendingSpan:
    """A deferred query span (``query_spans="deferred"``): what the span will say, recorded by
    the querying thread and built later by ``e6observe.deferred_spans``. Never made current:
    :func:`attach_span` returns None for it."""

    __slots__ = (
        "described",
        "host",
        "port",
        "namespace",
        "parent",
        "start_ns",
        "end_ns",
        "strategy",
        "outcome",
        "status_code",
        "histogram",
        "seconds",
        "events",
        "children",
    )

    def __init__(self, described: Any, host: Any, port: Any, namespace: Any, parent: Any) -> None:
        self.described = described
        self.host = host
        self.port = port
        self.namespace = namespace
        #: The context the query started in: the span's parent.
        self.parent = parent
        self.start_ns = time_ns()
        self.end_ns = 0
        self.strategy = ""
        self.outcome = ""
        self.status_code: Optional[str] = None
        self.histogram: Any = None
        self.seconds = 0.0
        #: (name, attributes, unix ns) of the strategy events while it ran (the dispatcher's).
        self.events: Optional[list[tuple[str, Any, int]]] = None
        self.children: Optional[list[Any]] = None


def span_binding() -> SpanBinding:
    """The process's :class:`SpanBinding` (imports the OpenTelemetry API at the first call)."""
    global _BINDING
    b = _BINDING
    if b is None:
        b = _BINDING = SpanBinding()
    return b


def _never() -> bool:
    return False


def _always() -> bool:
    return True


def context_getter() -> Callable[[], Any]:
    """The API's current-context getter as a C call (``ContextVar.get``), for the hooks' fast
    path: an empty context (the common case) cannot suppress, so ``get() and suppressed()``
    skips the Python-level check. Where the API keeps no context variable: a getter that is
    always truthy, so the full check runs."""
    try:
        from opentelemetry import context as c
    except Exception:  # pragma: no cover - no API: nothing can suppress
        return _always
    var = getattr(getattr(c, "_RUNTIME_CONTEXT", None), "_current_context", None)
    return var.get if isinstance(var, contextvars.ContextVar) else _always


def suppression_check() -> Callable[[], bool]:
    """A cheap ``() -> bool``: True inside ``suppress_instrumentation()``. Never raises."""
    try:
        from opentelemetry import context as c

        key = c._SUPPRESS_INSTRUMENTATION_KEY
    except Exception:  # pragma: no cover - an API without the key: nothing can suppress
        return _never
    var = getattr(getattr(c, "_RUNTIME_CONTEXT", None), "_current_context", None)
    if isinstance(var, contextvars.ContextVar):
        get = var.get
        # The last non-empty context found not to suppress. A context never changes once made
        # (attach sets a new one), so the same object gives the same answer: a query span made
        # current around a phase is checked once, not at each of its RPCs. One object is held.
        clear: Any = None

        def suppressed() -> bool:
            nonlocal clear
            ctx = get()  # the variable has a default: never raises
            # An empty context (no span, nothing suppressed) is the common case: one test.
            if not ctx or ctx is clear:
                return False
            if ctx.get(key) or ctx.get(_PLAIN_KEY):
                return True
            clear = ctx
            return False
    else:  # pragma: no cover - a runtime context other than the API's default

        def suppressed() -> bool:
            try:
                return bool(c.get_value(key) or c.get_value(_PLAIN_KEY))
            except Exception:
                return False

    return suppressed


def meter(provider: Any) -> Any:
    """e6observe's meter on ``provider`` (one scope: name, version and schema URL)."""
    from ._version import __version__

    try:
        return provider.get_meter(SCOPE, __version__, schema_url=SCHEMA_URL)
    except TypeError:  # pragma: no cover - a provider whose get_meter takes no schema_url
        return provider.get_meter(SCOPE, __version__)


def tracer(provider: Any) -> Any:
    """e6observe's tracer on ``provider``."""
    from ._version import __version__

    try:
        return provider.get_tracer(SCOPE, __version__, schema_url=SCHEMA_URL)
    except TypeError:  # pragma: no cover
        return provider.get_tracer(SCOPE, __version__)


def attach_span(span: Any) -> Any:
    """Make ``span`` current; returns the token for :func:`detach` (None if that failed)."""
    if span.__class__ is PendingSpan:  # deferred: never current
        return None
    try:
        b = _BINDING or span_binding()
        return b.attach(b.in_context(span))
    except Exception:
        return None


def detach(token: Any) -> None:
    """Undo :func:`attach_span`. Never raises (a token from another context is ignored)."""
    if token is None:
        return
    try:
        (_BINDING or span_binding()).reset(token)
    except Exception:
        pass


__all__ = [
    "SCHEMA_URL",
    "SCOPE",
    "suppression_check",
    "meter",
    "tracer",
    "attach_span",
    "detach",
    "SpanBinding",
    "span_binding",
    "PendingSpan",
]
