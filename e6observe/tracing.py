"""Query spans: one OpenTelemetry CLIENT span per query, following the database conventions.

Active only when a tracer provider is passed (``tracer_provider=``) or a real (SDK) provider is
set globally; with neither, no span API is touched on the query path. A span covers the query
as the cursor hook measures it (execute to clear) and carries:

* name: ``db.query.summary`` - the operation and the tables it names (``SELECT orders``), built
  from the sanitized text (no literal can reach it), bounded in length; ``db.operation.name``
  when no table is found, ``e6data`` when not even the operation can be told;
* ``db.system.name="e6data"``, ``db.operation.name``, ``db.query.summary``, ``db.namespace``
  (``catalog|database``), ``server.address``, ``server.port``;
* ``db.query.text`` only with ``record_query_text=True``, and then sanitized: comments dropped,
  string/number literals replaced by ``?``, truncated - never the literal values;
* ``e6data.strategy`` (the colour the query was pinned to), ``e6data.query.outcome``;
* on failure: status ERROR, ``error.type`` - the same value ``db.client.operation.duration``
  carries for that query (``switch_interrupted``, else ``_OTHER``; see :func:`error_type`) -
  and ``db.response.status_code``, the gRPC status name, when the failure had one;
* every strategy event (``e6data.strategy.applied`` ...) that happens while it is open, as a span
  event, delivered from the recorder's dispatcher thread.

The span is made current while the connector runs the query's calls (execute, fetch, clear),
so the spans other instrumentations start for them (``opentelemetry-instrumentation-grpc``'s
client spans) are its children. Inside ``suppress_instrumentation()`` no span is started.

Its trace and span ids are handed to the latency histograms as exemplars.

A tracer works out a statement's name and attributes once per statement text and keeps them for
the next spans of that text (:data:`SUMMARY_CACHE` statements, least recently used out, keyed by
the text's hash: the text and its literals are not kept).
"""

from __future__ import annotations

import re
import threading
from typing import Any, Optional

# ``error.type`` and ``db.namespace`` live in _otelattrs: the metric sink and the cursor hooks
# use them too, and must not load this module (its regular expressions) when no tracer exists.
from . import _fork
from ._otelattrs import ERROR_TYPES, db_namespace, error_type
from ._otelctx import span_binding
from ._safe import record_internal_error
from .events import Event
from .recorder import Recorder

_COMPONENT = "tracing"
#: Longest ``db.query.text`` kept (after sanitizing).
MAX_QUERY_TEXT = 1024
#: Statement keywords used as span names / ``db.operation.name`` (anything else: no operation).
OPERATIONS = frozenset(
    {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "WITH",
        "VALUES",
        "SHOW",
        "DESCRIBE",
        "DESC",
        "EXPLAIN",
        "CREATE",
        "DROP",
        "ALTER",
        "TRUNCATE",
        "USE",
        "SET",
        "CALL",
        "REFRESH",
        "ANALYZE",
    }
)

_COMMENTS = re.compile(r"--[^\n]*|/\*.*?(?:\*/|$)", re.S)
#: Comments and literals in one left-to-right scan: a comment marker inside a string literal
#: (``'--'``) is part of the literal, and a quote inside a comment opens nothing. Removing comments
#: in a separate pass first would cut a literal in half and leave the next literal's value bare.
_TOKENS = re.compile(
    r"""(?P<comment>--[^\n]*|/\*.*?(?:\*/|$))
      | '(?:[^'\\]|\\.|'')*'            # 'single-quoted', with \-escapes or doubled quotes
      | "(?:[^"\\]|\\.|"")*"            # "double-quoted" (a string literal in Hive dialects)
      | \$\$.*?\$\$                     # $$dollar-quoted$$
      | \b0[xX][0-9a-fA-F]+\b           # hex
      | (?<![\w.$])\d+(?:\.\d*)?(?:[eE][-+]?\d+)?  # numbers not part of a name
      | (?<![\w.$])\.\d+(?:[eE][-+]?\d+)?""",
    re.S | re.X,
)
_FIRST_WORD = re.compile(r"[\s(]*([A-Za-z]+)")
#: Keywords after which a table name follows, for ``db.query.summary``.
_TARGET = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+([A-Za-z_][\w.]{0,127})", re.I)
#: Longest ``db.query.summary`` (the span name): a few tables, never a whole query.
MAX_SUMMARY = 128
#: Tables named in a summary at most.
MAX_SUMMARY_TARGETS = 3
#: Statements whose span name and attributes a tracer keeps (bounded; least recently used out).
SUMMARY_CACHE = 256


#: Stands in for a literal whose end depends on the dialect (see :func:`_token`).
_AMBIGUOUS = "\x00"


def _token(m: re.Match[str]) -> str:
    if m.group("comment") is not None:
        return " "
    lit = m.group()
    if lit[0] in "'\"" and "\\" + lit[0] in lit:
        # ``\'`` ends the literal in standard SQL and escapes the quote in Hive dialects: under
        # one of the two readings the rest of the query may be literal text. Cut here.
        return _AMBIGUOUS
    return "?"


def sanitize_query(text: object) -> Optional[str]:
    """The query with comments removed and every literal replaced by ``?`` (None if unusable)."""
    if not isinstance(text, str):
        return None
    s = _TOKENS.sub(_token, text[: MAX_QUERY_TEXT * 8].replace(_AMBIGUOUS, " "))
    # An unterminated quote would leave a literal's tail in place: cut at the first one left
    # (or at a literal whose end is ambiguous).
    cut = min((i for i in (s.find("'"), s.find('"'), s.find("$$"), s.find(_AMBIGUOUS)) if i >= 0), default=-1)
    if cut >= 0:
        s = s[:cut] + "?"
    # Runs of whitespace to one space, ends stripped: str.split() splits where regular
    # expressions' \s matches (str.isspace, every code point), without a regex pass.
    s = " ".join(s.split())
    if len(s) > MAX_QUERY_TEXT:
        s = s[: MAX_QUERY_TEXT - 3] + "..."
    return s


def operation_name(text: object) -> Optional[str]:
    """The statement keyword (``SELECT`` ...) of a query, from a bounded set; else None."""
    if not isinstance(text, str):
        return None
    head = text[:4096]
    # Comments can only hide the first word where a comment marker is (a fast substring test
    # spares the regular-expression pass over the whole text for most statements).
    m = _FIRST_WORD.match(_COMMENTS.sub(" ", head) if ("--" in head or "/*" in head) else head)
    if not m:
        return None
    word = m.group(1).upper()
    return word if word in OPERATIONS else None


def query_summary(text: object, op: Optional[str] = None) -> Optional[str]:
    """``db.query.summary``: the operation and up to three tables (``SELECT orders customers``).

    Read from the sanitized query (comments and literals gone), so it holds keywords and
    identifiers only; bounded to :data:`MAX_SUMMARY` characters. None without an operation.
    """
    op = op or operation_name(text)
    if op is None:
        return None
    return _summary(op, sanitize_query(text) or "")


def _describe(query: str, record_text: bool) -> tuple[str, dict[str, Any], Optional[str]]:
    """The span name, the statement's attributes and (``record_text``) its sanitized text.

    The query is sanitized once, for the summary and the text alike (as :func:`query_summary`
    and :func:`sanitize_query` would each have done)."""
    op = operation_name(query)
    attrs: dict[str, Any] = {"db.system.name": "e6data"}
    if op is None:
        return "e6data", attrs, (sanitize_query(query) if record_text else None)
    clean = sanitize_query(query)
    summary = _summary(op, clean or "")
    attrs["db.operation.name"] = op
    attrs["db.query.summary"] = summary
    return summary, attrs, (clean or None) if record_text else None


def _summary(op: str, clean: str) -> str:
    """``db.query.summary`` of a sanitized query whose operation is ``op``."""
    targets: list[str] = []
    for m in _TARGET.finditer(clean):
        name = m.group(1)
        if name not in targets and name.upper() not in OPERATIONS:
            targets.append(name)
        if len(targets) >= MAX_SUMMARY_TARGETS:
            break
    summary = " ".join([op] + targets)
    return summary if len(summary) <= MAX_SUMMARY else summary[:MAX_SUMMARY].rsplit(" ", 1)[0]


def _status_code(exc: Optional[BaseException]) -> Optional[str]:
    """The gRPC status name of ``exc`` (``UNAVAILABLE``), if it has one."""
    if exc is None:
        return None
    try:
        name = getattr(exc.code(), "name", None)  # type: ignore[attr-defined]
        return name if isinstance(name, str) else None
    except Exception:
        return None


def resolve_tracer_provider(given: Any) -> Any:
    """``given``, else the global provider if one that records is set; else None."""
    if given is not None:
        return given
    try:
        from opentelemetry import trace

        tp = trace.get_tracer_provider()
    except Exception:
        return None
    if isinstance(tp, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return tp


class QueryTracer:
    """Starts and ends query spans; adds strategy events to the spans in flight."""

    #: Spans built later, off the querying thread (``deferred_spans.DeferredQueryTracer``).
    deferred = False

    def __init__(self, tracer_provider: Any, recorder: Recorder, record_query_text: bool = False) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from ._otelctx import tracer

        self._tracer = tracer(tracer_provider)
        self._kind = SpanKind.CLIENT
        self._error_status = Status(StatusCode.ERROR)
        self._record_text = record_query_text
        # Span events carry the attributes the event log records carry (one set of names).
        from ._otelattrs import event_attributes, rpc_method_names

        self._event_attributes = event_attributes
        self._rpc_names = rpc_method_names()
        self._recorder = recorder
        b = span_binding()
        #: The context functions bound once (the cursor hooks make a query's span current with
        #: them, phase by phase): ``current``, ``in_context(span, parent)``, ``attach``, ``reset``.
        self.current = b.current
        self.in_context = b.in_context
        self.attach = b.attach
        self.reset = b.reset
        #: Statement -> (span name, its attributes, sanitized text or None), at most
        #: SUMMARY_CACHE statements, least recently used out first. Keyed by the text's hash,
        #: never the text: the statement's literals are not kept (what is kept - operation,
        #: tables, the sanitized text - is what every span of it carries anyway). Two texts
        #: with one 64-bit (per-process salted) hash would share a name: literal-free either way.
        self._statements: dict[int, tuple[str, dict[str, Any], Optional[str]]] = {}
        self._statements_lock = threading.Lock()
        self._in_flight: set[Any] = set()
        # Serialises "add a span event" against "end the span", so no event lands on an ended
        # span. Held only while tracing is on; never on the untraced query path.
        self._lock = threading.Lock()
        recorder.subscribe(self._on_event)
        # The dispatcher thread may hold the lock at a fork: the child gets a new one.
        _fork.register("locks", self._renew_locks_after_fork, "fork.tracing")

    def _renew_locks_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._statements_lock = threading.Lock()

    def start(
        self,
        query: object,
        host: object = None,
        port: object = None,
        namespace: Optional[str] = None,
        context: Any = None,
    ) -> Any:
        """Start the CLIENT span of one query (the hooks make it current around their calls).

        ``context``: the current context when the caller has it at hand (the span's parent)."""
        if type(query) is str:
            statements = self._statements
            key = hash(query)
            described = statements.pop(key, None)  # and put back last: least recently used first
            if described is None:
                described = _describe(query, self._record_text)
                if len(statements) >= SUMMARY_CACHE:
                    self._forget_oldest()
            statements[key] = described
            name, attrs, text = described
            attrs = attrs.copy()
        else:  # not a statement: nothing to name (operation_name(query) is None)
            name, attrs, text = "e6data", {"db.system.name": "e6data"}, None
        if namespace:
            attrs["db.namespace"] = namespace
        if isinstance(host, str) and host:
            attrs["server.address"] = host
        if type(port) is int or (isinstance(port, int) and not isinstance(port, bool)):
            attrs["server.port"] = port
        if text:
            attrs["db.query.text"] = text
        span = self._tracer.start_span(name, context, self._kind, attrs)
        self._in_flight.add(span)  # one C call: no lock needed to add (see finish)
        return span

    def _forget_oldest(self) -> None:
        """Make room in the statement cache: drop the least recently used entries (a bounded
        number of tries; a hit in another thread may move or take the entry looked at)."""
        statements = self._statements
        with self._statements_lock:
            for _ in range(8):
                if len(statements) < SUMMARY_CACHE:
                    return
                try:
                    statements.pop(next(iter(statements)), None)
                except (RuntimeError, StopIteration):  # changed size under the iterator
                    pass
            if len(statements) >= SUMMARY_CACHE:
                statements.clear()  # never grows past its bound

    def finish(self, span: Any, strategy: str, outcome: str, exc: Optional[BaseException] = None) -> None:
        with self._lock:  # no strategy event lands on the span once it is out of the set
            self._in_flight.discard(span)
        # One set_attribute per key: the SDK's set_attributes costs more for two keys (it cleans
        # the mapping through two isinstance checks against collections.abc ABCs).
        span.set_attribute("e6data.strategy", strategy)
        span.set_attribute("e6data.query.outcome", outcome)
        etype = None if outcome == "ok" else error_type(outcome)
        if etype is not None:
            span.set_attribute("error.type", etype)
            code = _status_code(exc)
            if code is not None:
                span.set_attribute("db.response.status_code", code)
            span.set_status(self._error_status)
        span.end()

    def child_span(self, parent: Any, name: str) -> Any:
        """Start an INTERNAL span under ``parent`` (the query's span), e.g. the auto-resume
        wait ``e6data.cluster.resume``."""
        from opentelemetry import trace

        return self._tracer.start_span(
            name, context=trace.set_span_in_context(parent), kind=trace.SpanKind.INTERNAL
        )

    def end_child_span(
        self, span: Any, attributes: dict[str, Any], exc: Optional[BaseException] = None
    ) -> None:
        for k, v in attributes.items():
            span.set_attribute(k, v)
        if exc is not None:
            span.set_attribute("error.type", ERROR_TYPES["error"])  # as a failed query's
            span.set_status(self._error_status)
        span.end()

    @staticmethod
    def exemplar(span: Any) -> Optional[tuple[str, str]]:
        """``(trace_id_hex, span_id_hex)`` of a sampled span, for histogram exemplars."""
        ctx = span.get_span_context()
        trace_id, span_id = ctx.trace_id, ctx.span_id
        # is_valid (both ids non-zero) and trace_flags.sampled, without their property frames
        if not (trace_id and span_id and ctx.trace_flags & 1):
            return None
        return format(trace_id, "032x"), format(span_id, "016x")

    def _on_event(self, ev: Event) -> None:
        if not self._in_flight:
            return
        attrs = self._event_attributes(ev, self._rpc_names)
        ts = int(ev.time_unix * 1e9)
        with self._lock:
            for span in list(self._in_flight):
                try:
                    span.add_event(ev.name, attributes=attrs, timestamp=ts)
                except Exception as exc:
                    record_internal_error(_COMPONENT, exc)

    def in_flight(self) -> int:
        """Spans open right now."""
        return len(self._in_flight)

    def close(self) -> None:
        """Stop receiving events (spans still open are ended by their queries)."""
        self._recorder.unsubscribe(self._on_event)
        _fork.unregister("locks", self._renew_locks_after_fork)


__all__ = [
    "QueryTracer",
    "sanitize_query",
    "operation_name",
    "query_summary",
    "error_type",
    "db_namespace",
    "resolve_tracer_provider",
    "OPERATIONS",
    "MAX_QUERY_TEXT",
    "ERROR_TYPES",
]
