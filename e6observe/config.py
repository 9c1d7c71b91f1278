"""Options for :func:`e6observe.instrument`: keyword arguments, ``E6OBSERVE_*`` variables, defaults.

Every option is a keyword argument of ``instrument()`` and, for the ones a string can express,
also an environment variable ``E6OBSERVE_<NAME IN UPPER CASE>``. A keyword argument wins over
the environment, the environment over the default. The whole set is validated once, in
:meth:`Options.resolve`; a bad value raises :class:`ConfigError` naming the option and the
offending value (secrets are never echoed). Standard ``OTEL_*`` variables are left to
OpenTelemetry itself.

================== ======================== =========================================================
option             default                  meaning
================== ======================== =========================================================
prometheus_port    None (no HTTP server)    port of the ``/metrics`` endpoint (0: any free port)
prometheus_addr    ``127.0.0.1``            address the endpoint binds
registry           None (own registry)      a ``prometheus_client.CollectorRegistry`` to register in;
                                            the global ``REGISTRY`` only when passed explicitly
meter_provider     None (global, if SDK)    OpenTelemetry ``MeterProvider`` for metrics
tracer_provider    None (global, if SDK)    ``TracerProvider`` for query spans
logger_provider    None (global, if SDK)    ``LoggerProvider`` for events as log records
otel               True                     export to OpenTelemetry at all
watcher_interval   1.0                      seconds between watcher iterations (> 0)
event_capacity     1024                     strategy events kept in the in-memory ring
record_query_text  False                    put sanitized query text (literals as ``?``) on spans
query_spans        ``current``              query spans: ``current`` (made current around the
                                            query's calls), ``deferred`` (built off the querying
                                            thread, not current) or ``off``
tls_certfile       None                     serve ``/metrics`` over TLS with this certificate
tls_keyfile        None                     ... and this private key
tls_client_cafile  None                     require client certificates signed by this CA
basic_auth         None                     ``user:password`` required on ``/metrics`` (never logged)
multiprocess_dir   ``$PROMETHEUS_MULTIPROC_DIR`` prometheus_client multi-process directory
runtime_metrics    ``auto``                 process/GC metrics: true, false, or auto (OpenTelemetry's
                                            off while its system-metrics instrumentation is active)
http_max_head_bytes 65536                   bytes a request head may take (more: 431)
http_head_timeout  5.0                      seconds to receive a request head (later: 408)
http_write_timeout 10.0                     seconds one response write may block (then: closed)
prometheus_low_cardinality False            serve about 55 series per process instead of ~440: the
                                            switch, mismatch and latency-per-colour series only
                                            (``e6observe/sinks/lowcard.py``; BENCHMARKS.md, fleet scale)
================== ======================== =========================================================
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from typing import Any, Callable, Mapping, Optional

ENV_PREFIX = "E6OBSERVE_"
#: Upper bound on the event ring: each event is a few hundred bytes; this keeps it well under
#: 100 MB whatever a configuration says.
MAX_EVENT_CAPACITY = 100_000
#: Longest watcher interval accepted (a day); anything longer is almost certainly a unit mistake.
MAX_WATCHER_INTERVAL = 86_400.0
#: Bounds of the endpoint's request-head budget, head deadline and write deadline.
HEAD_BYTES_RANGE = (1024, 1 << 20)
HEAD_TIMEOUT_MAX = 300.0
WRITE_TIMEOUT_MAX = 3600.0

# ASCII digits only: int()/float() also take "1_000", Arabic-Indic and fullwidth digits.
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_ASCII_SPACE = " \t\r\n"
# What inet_aton() reads as an IPv4 address although it is not one written out in full: "0"
# (0.0.0.0), "127.1", "0x7f.1", "2130706433". Refused, so that a typo cannot bind every address.
_INET_ATON_FORM = re.compile(r"(0[xX][0-9a-fA-F]*|[0-9]+)(\.(0[xX][0-9a-fA-F]*|[0-9]+)){0,3}\.?")
_HOSTNAME = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?)+")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """An option has an unusable value. The message names the option (and where it came from)."""


def _origin(name: str, from_env: bool) -> str:
    return f"{ENV_PREFIX}{name.upper()}" if from_env else name


def _show(value: object) -> str:
    """A short, safe rendering of a rejected (non-secret) value."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- per-kind parsers: (raw value, came from env?) -> parsed value ----------------------------
def _parse_bool(name: str, raw: object, env: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    if env and isinstance(raw, str):
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise ConfigError(
        f"{_origin(name, env)} must be a boolean (true/false, 1/0, yes/no, on/off), got {_show(raw)}"
    )


def _parse_int(name: str, raw: object, env: bool) -> int:
    if isinstance(raw, bool):
        raise ConfigError(f"{_origin(name, env)} must be an integer, got {_show(raw)}")
    if isinstance(raw, int):
        return raw
    if env and isinstance(raw, str) and _INT_TEXT.fullmatch(raw.strip(_ASCII_SPACE)):
        return int(raw.strip(_ASCII_SPACE), 10)
    raise ConfigError(f"{_origin(name, env)} must be an integer, got {_show(raw)}")


def _parse_float(name: str, raw: object, env: bool) -> float:
    if isinstance(raw, bool):
        raise ConfigError(f"{_origin(name, env)} must be a number of seconds, got {_show(raw)}")
    if isinstance(raw, (int, float)):
        return float(raw)
    if env and isinstance(raw, str) and _FLOAT_TEXT.fullmatch(raw.strip(_ASCII_SPACE)):
        return float(raw.strip(_ASCII_SPACE))
    raise ConfigError(f"{_origin(name, env)} must be a number of seconds, got {_show(raw)}")


def _parse_str(name: str, raw: object, env: bool) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, os.PathLike):
        return str(os.fspath(raw))
    raise ConfigError(f"{_origin(name, env)} must be a string, got {type(raw).__name__}")


def _parse_runtime(name: str, raw: object, env: bool) -> object:
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return "auto"
    try:
        return _parse_bool(name, raw, env)
    except ConfigError:
        raise ConfigError(f"{_origin(name, env)} must be true, false or auto, got {_show(raw)}") from None


#: The values of ``query_spans`` (see e6observe/deferred_spans.py for ``deferred``).
QUERY_SPAN_MODES = ("current", "deferred", "off")


def _parse_query_spans(name: str, raw: object, env: bool) -> str:
    value = raw.strip(_ASCII_SPACE).lower() if isinstance(raw, str) else None
    if value not in QUERY_SPAN_MODES:
        choices = ", ".join(QUERY_SPAN_MODES)
        raise ConfigError(f"{_origin(name, env)} must be one of {choices}, got {_show(raw)}")
    return value


def _parse_object(name: str, raw: object, env: bool) -> object:
    if env:  # pragma: no cover - objects have no environment variable
        raise ConfigError(f"{name} cannot be set from the environment")
    return raw


class _Spec:
    """How one option is read. (A plain class, as :class:`Options`: see there.)"""

    __slots__ = ("parse", "env", "optional", "secret", "no_blank")

    def __init__(
        self,
        parse: Callable[[str, object, bool], object],
        env: bool = True,  # settable from E6OBSERVE_<NAME>
        optional: bool = True,  # an empty env value / None means "unset"
        secret: bool = False,
        no_blank: bool = False,
    ) -> None:
        self.parse = parse
        self.env = env
        self.optional = optional
        self.secret = secret
        #: A value that is only whitespace is an error (not "unset"): these options protect the
        #: endpoint, and a stray newline must not switch that protection off in silence.
        self.no_blank = no_blank


_SPECS: dict[str, _Spec] = {
    "prometheus_port": _Spec(_parse_int),
    "prometheus_addr": _Spec(_parse_str, optional=False),
    "registry": _Spec(_parse_object, env=False),
    "meter_provider": _Spec(_parse_object, env=False),
    "tracer_provider": _Spec(_parse_object, env=False),
    "logger_provider": _Spec(_parse_object, env=False),
    "otel": _Spec(_parse_bool, optional=False),
    "watcher_interval": _Spec(_parse_float, optional=False),
    "event_capacity": _Spec(_parse_int, optional=False),
    "record_query_text": _Spec(_parse_bool, optional=False),
    "query_spans": _Spec(_parse_query_spans, optional=False),
    "tls_certfile": _Spec(_parse_str, no_blank=True),
    "tls_keyfile": _Spec(_parse_str, no_blank=True),
    "tls_client_cafile": _Spec(_parse_str, no_blank=True),
    "basic_auth": _Spec(_parse_str, secret=True, no_blank=True),
    "multiprocess_dir": _Spec(_parse_str),
    "runtime_metrics": _Spec(_parse_runtime, optional=False),
    "http_max_head_bytes": _Spec(_parse_int, optional=False),
    "http_head_timeout": _Spec(_parse_float, optional=False),
    "http_write_timeout": _Spec(_parse_float, optional=False),
    "prometheus_low_cardinality": _Spec(_parse_bool, optional=False),
}


class Options:
    """The validated configuration of one ``instrument()`` call. Build it with :meth:`resolve`.

    Immutable; equal when every option is. ``repr`` never shows ``basic_auth``;
    :meth:`describe` gives a loggable summary.

    A plain class with slots rather than a frozen dataclass: a dataclass compiles its generated
    methods when the module is imported, and ``instrument()`` paid about 0.2 MiB of RSS for
    that compiler's memory (issue 17, BENCHMARKS.md start-up).
    """

    __slots__ = (*_SPECS, "sources")

    prometheus_port: Optional[int]
    prometheus_addr: str
    registry: Any
    meter_provider: Any
    tracer_provider: Any
    logger_provider: Any
    otel: bool
    watcher_interval: float
    event_capacity: int
    record_query_text: bool
    query_spans: str
    tls_certfile: Optional[str]
    tls_keyfile: Optional[str]
    tls_client_cafile: Optional[str]
    basic_auth: Optional[str]
    multiprocess_dir: Optional[str]
    runtime_metrics: Any  # True, False or "auto"
    http_max_head_bytes: int
    http_head_timeout: float
    http_write_timeout: float
    prometheus_low_cardinality: bool
    #: Where each option's value came from: "kwarg", "env" or "default" (for messages/tests).
    sources: Mapping[str, str]

    def __init__(
        self,
        *,
        prometheus_port: Optional[int] = None,
        prometheus_addr: str = "127.0.0.1",
        registry: Any = None,
        meter_provider: Any = None,
        tracer_provider: Any = None,
        logger_provider: Any = None,
        otel: bool = True,
        watcher_interval: float = 1.0,
        event_capacity: int = 1024,
        record_query_text: bool = False,
        query_spans: str = "current",
        tls_certfile: Optional[str] = None,
        tls_keyfile: Optional[str] = None,
        tls_client_cafile: Optional[str] = None,
        basic_auth: Optional[str] = None,
        multiprocess_dir: Optional[str] = None,
        runtime_metrics: Any = "auto",
        http_max_head_bytes: int = 64 * 1024,
        http_head_timeout: float = 5.0,
        http_write_timeout: float = 10.0,
        prometheus_low_cardinality: bool = False,
        sources: Optional[Mapping[str, str]] = None,
    ) -> None:
        values = locals()
        for name in _SPECS:
            object.__setattr__(self, name, values[name])
        object.__setattr__(self, "sources", {} if sources is None else sources)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Options are immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Options are immutable: cannot delete {name!r}")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _SPECS)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = (f"{n}={getattr(self, n)!r}" for n, spec in _SPECS.items() if not spec.secret)
        return f"Options({', '.join(shown)})"

    # ---------------------------------------------------------------------------------------
    @classmethod
    def resolve(
        cls, kwargs: Optional[Mapping[str, object]] = None, environ: Optional[Mapping[str, str]] = None
    ) -> Options:
        """Merge ``kwargs`` > ``environ`` (default ``os.environ``) > defaults, then validate.

        Raises :class:`ConfigError` on an unknown option or a bad value.
        """
        kwargs = dict(kwargs or {})
        env = os.environ if environ is None else environ
        unknown = sorted(k for k in kwargs if k not in _SPECS)
        if unknown:
            hints = []
            for k in unknown:
                import difflib  # only for this message

                close = difflib.get_close_matches(k, list(_SPECS), n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                "unknown e6observe option " + ", ".join(hints) + "; known options: " + ", ".join(_SPECS)
            )
        values: dict[str, object] = {}
        sources: dict[str, str] = {}
        for name, spec in _SPECS.items():
            if name in kwargs:
                raw, from_env = kwargs[name], False
                sources[name] = "kwarg"
            elif spec.env and (ENV_PREFIX + name.upper()) in env:
                raw, from_env = env[ENV_PREFIX + name.upper()], True
                sources[name] = "env"
                if isinstance(raw, str) and raw.strip() == "":
                    if spec.no_blank and raw != "":
                        raise ConfigError(
                            f"{_origin(name, True)} is blank (only whitespace); "
                            "unset it, set it to the empty string, or give a value"
                            + (" (value not shown)" if spec.secret else "")
                        )
                    if spec.optional:
                        raw = None
            else:
                sources[name] = "default"
                continue
            if raw is None:
                if not spec.optional:
                    raise ConfigError(f"{_origin(name, from_env)} cannot be empty/None")
                values[name] = None
                continue
            values[name] = spec.parse(name, raw, from_env)
        if "multiprocess_dir" not in values and env.get("PROMETHEUS_MULTIPROC_DIR"):
            values["multiprocess_dir"] = env["PROMETHEUS_MULTIPROC_DIR"]
            sources["multiprocess_dir"] = "PROMETHEUS_MULTIPROC_DIR"
        opts = cls(**values, sources=sources)  # type: ignore[arg-type]
        opts._validate()
        return opts

    # ---------------------------------------------------------------------------------------
    def _where(self, name: str) -> str:
        src = self.sources.get(name)
        if src == "PROMETHEUS_MULTIPROC_DIR":
            return src
        return _origin(name, src == "env")

    def _validate(self) -> None:
        w = self._where
        port = self.prometheus_port
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(
                f"{w('prometheus_port')} must be within 0..65535 (0: any free port), got {port!r}"
            )
        if not self.prometheus_addr.strip():
            raise ConfigError(f"{w('prometheus_addr')} must name an address, got an empty string")
        self._validate_addr()
        iv = self.watcher_interval
        if not (math.isfinite(iv) and 0 < iv <= MAX_WATCHER_INTERVAL):
            raise ConfigError(
                f"{w('watcher_interval')} must be > 0 and <= {MAX_WATCHER_INTERVAL:g} seconds, got {iv!r}"
            )
        if not 1 <= self.event_capacity <= MAX_EVENT_CAPACITY:
            raise ConfigError(
                f"{w('event_capacity')} must be within 1..{MAX_EVENT_CAPACITY}, got {self.event_capacity!r}"
            )
        if self.registry is not None:
            try:
                from prometheus_client.registry import CollectorRegistry
            except ImportError as exc:  # pragma: no cover - a declared dependency
                raise ConfigError("registry needs prometheus_client installed") from exc
            if not isinstance(self.registry, CollectorRegistry):
                raise ConfigError(
                    "registry must be a prometheus_client CollectorRegistry, got "
                    f"{type(self.registry).__name__}"
                )
        for name, method in (
            ("meter_provider", "get_meter"),
            ("tracer_provider", "get_tracer"),
            ("logger_provider", "get_logger"),
        ):
            value = getattr(self, name)
            if value is not None and not callable(getattr(value, method, None)):
                raise ConfigError(
                    f"{name} must be an OpenTelemetry provider with {method}(), got {type(value).__name__}"
                )
        self._validate_tls()
        self._validate_limits()
        if self.basic_auth is not None:
            user, sep, password = self.basic_auth.partition(":")
            if not sep or not user.strip() or not password.strip():
                # Never echo the value: it is a credential, possibly with a typo.
                raise ConfigError(
                    f"{w('basic_auth')} must have the form user:password with both "
                    "parts non-empty (value not shown)"
                )
            if any(ord(c) < 32 or ord(c) == 127 for c in self.basic_auth):
                raise ConfigError(f"{w('basic_auth')} contains control characters (value not shown)")
        if self.multiprocess_dir is not None and not os.path.isdir(self.multiprocess_dir):
            raise ConfigError(
                f"{w('multiprocess_dir')} must be an existing directory, got {self.multiprocess_dir!r}"
            )

    def _validate_addr(self) -> None:
        w = self._where
        addr = self.prometheus_addr
        try:
            ipaddress.ip_address(addr.split("%", 1)[0] if ":" in addr else addr)
            return
        except ValueError:
            pass
        if _INET_ATON_FORM.fullmatch(addr):
            raise ConfigError(
                f"{w('prometheus_addr')} must be a full IP address or a host name, "
                f"got {_show(addr)} (the C library would read it as "
                "a shortened IPv4 address; write 0.0.0.0 to listen on every address)"
            )
        if not _HOSTNAME.fullmatch(addr):
            raise ConfigError(
                f"{w('prometheus_addr')} must be an IP address or a host name, got {_show(addr)}"
            )

    def _validate_limits(self) -> None:
        w = self._where
        lo, hi = HEAD_BYTES_RANGE
        if not lo <= self.http_max_head_bytes <= hi:
            raise ConfigError(
                f"{w('http_max_head_bytes')} must be within {lo}..{hi}, got {self.http_max_head_bytes!r}"
            )
        for name, top in (("http_head_timeout", HEAD_TIMEOUT_MAX), ("http_write_timeout", WRITE_TIMEOUT_MAX)):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= top):
                raise ConfigError(f"{w(name)} must be > 0 and <= {top:g} seconds, got {value!r}")

    def _validate_tls(self) -> None:
        w = self._where
        cert, key, ca = self.tls_certfile, self.tls_keyfile, self.tls_client_cafile
        if (cert is None) != (key is None):
            given, missing = (
                ("tls_certfile", "tls_keyfile") if key is None else ("tls_keyfile", "tls_certfile")
            )
            raise ConfigError(
                f"{w(given)} is set but {missing} is not (neither as keyword nor as "
                f"{_origin(missing, True)}): a certificate and its key go together"
            )
        if ca is not None and cert is None:
            raise ConfigError(
                f"{w('tls_client_cafile')} (client-certificate auth) needs "
                "tls_certfile and tls_keyfile (the endpoint must itself serve TLS)"
            )
        for name, path in (("tls_certfile", cert), ("tls_keyfile", key), ("tls_client_cafile", ca)):
            if path is not None and not path.strip():
                raise ConfigError(f"{w(name)} is blank; give a file or leave it unset")
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{w(name)} must be a readable file, got {path!r} (not found)")
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigError(f"{w(name)} must be a readable file, got {path!r} (not readable)")

    # ---------------------------------------------------------------------------------------
    @property
    def tls_enabled(self) -> bool:
        """True when the ``/metrics`` endpoint serves HTTPS."""
        return self.tls_certfile is not None

    @property
    def basic_auth_credentials(self) -> Optional[tuple[str, str]]:
        """``(user, password)`` from ``basic_auth``, or None."""
        if self.basic_auth is None:
            return None
        user, _, password = self.basic_auth.partition(":")
        return user, password

    def describe(self) -> dict[str, object]:
        """A loggable view: secrets masked, provider objects by type name."""
        out: dict[str, object] = {}
        for name, spec in _SPECS.items():
            value = getattr(self, name)
            if spec.secret and value is not None:
                value = "***"
            elif value is not None and spec.parse is _parse_object:
                value = type(value).__name__
            out[name] = value
        return out


OPTION_NAMES: tuple[str, ...] = tuple(_SPECS)
ENV_OPTION_NAMES: tuple[str, ...] = tuple(ENV_PREFIX + n.upper() for n, s in _SPECS.items() if s.env)

__all__ = ["Options", "ConfigError", "OPTION_NAMES", "ENV_OPTION_NAMES", "ENV_PREFIX", "QUERY_SPAN_MODES"]
