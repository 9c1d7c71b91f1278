"""OpenTelemetry instrumentor for the e6data connector: ``opentelemetry-instrument`` support.

Registered under the ``opentelemetry_instrumentor`` entry point as ``e6data``, so
``opentelemetry-instrument python app.py`` instruments the connector with no code change (and
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=e6data`` turns it off). Options come from
``E6OBSERVE_*`` environment variables, or from keyword arguments of
``E6dataInstrumentor().instrument(...)`` (``tracer_provider``, ``meter_provider``,
``logger_provider`` and every e6observe option); the rest follows :func:`e6observe.instrument`.

Needs ``opentelemetry-instrumentation`` (which ``opentelemetry-instrument`` itself comes from).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Collection

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .config import OPTION_NAMES

logger = logging.getLogger("e6observe")

#: The connector versions e6observe supports (2.3.10+: see docs/configuration.md; 3.1: not yet seen).
_INSTRUMENTS = ("e6data-python-connector >= 2.3.10, < 3.1",)
#: BaseInstrumentor's own keyword arguments, not e6observe options.
_BASE_KWARGS = frozenset({"skip_dep_check", "raise_exception_on_conflict"})


def _spawn_bootstrap() -> bool:
    """True while a ``multiprocessing`` spawn child is still starting up.

    ``opentelemetry-instrument`` runs in every Python process that inherits its environment,
    including the connector's spawned result-decode workers, which learn their role (their
    process name) only after interpreter start-up. Such a child must stay inert.
    """
    return "--multiprocessing-fork" in sys.argv


#: Code run by ``python -c`` in multiprocessing's own helper processes (never the application).
_HELPER_CODE = (
    "multiprocessing.resource_tracker",
    "multiprocessing.forkserver",
    "multiprocessing.semaphore_tracker",
)


def _multiprocessing_helper() -> bool:
    """True in multiprocessing's resource-tracker / fork-server helper processes.

    They are plain ``python -c`` processes that inherit ``opentelemetry-instrument``'s
    environment; instrumenting them would start a watcher and try to bind the metrics port.
    Recognised from ``sys.orig_argv`` (Python 3.10+); on 3.9 they cannot be told apart.
    """
    argv = getattr(sys, "orig_argv", None) or []
    if "-c" not in argv:
        return False
    code = argv[argv.index("-c") + 1] if argv.index("-c") + 1 < len(argv) else ""
    return any(h in code for h in _HELPER_CODE)


def _defer_to_process_start(options: dict[str, Any]) -> None:
    """In a spawn child: instrument once the child knows its name, unless it is a decode worker.

    ``BaseProcess._bootstrap`` runs after the spawned process got its name and before its
    target; a one-shot wrapper there decides. Everything is contained.
    """
    import multiprocessing.process as mp

    original = mp.BaseProcess.__dict__.get("_bootstrap")
    if original is None:
        return

    def _bootstrap(self: Any, *args: Any, **kwargs: Any) -> Any:
        if mp.BaseProcess.__dict__.get("_bootstrap") is _bootstrap:
            mp.BaseProcess._bootstrap = original  # type: ignore[attr-defined]
        try:
            from e6data_python_connector.result_decode_worker import WORKER_PREFIX
        except Exception:
            WORKER_PREFIX = "e6-result-decode-"  # noqa: N806
        try:
            if not str(getattr(self, "name", "")).startswith(WORKER_PREFIX):
                from . import _api

                _api.instrument(**options)
        except Exception as exc:
            from ._safe import record_internal_error

            record_internal_error("instrumentor", exc)
        return original(self, *args, **kwargs)

    mp.BaseProcess._bootstrap = _bootstrap  # type: ignore[attr-defined]


class E6dataInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """``BaseInstrumentor`` for ``e6data-python-connector``; delegates to :mod:`e6observe`."""

    def instrumentation_dependencies(self) -> Collection[str]:
        """The connector versions this instrumentation supports."""
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        options = {k: v for k, v in kwargs.items() if k in OPTION_NAMES and v is not None}
        ignored = sorted(k for k in kwargs if k not in OPTION_NAMES and k not in _BASE_KWARGS)
        if ignored:
            logger.debug("e6observe: ignoring instrumentor arguments %s", ignored)
        if _multiprocessing_helper():
            logger.debug("e6observe: multiprocessing helper process; not instrumenting")
            return
        if _spawn_bootstrap():
            _defer_to_process_start(options)
            return
        from . import _api
        from .config import ConfigError

        try:
            _api.instrument(**options)
        except ConfigError as exc:
            # Under opentelemetry-instrument an exception here would stop OpenTelemetry from
            # loading the instrumentors after this one; the application runs uninstrumented by
            # e6observe and says why, once.
            logger.error("e6observe: not instrumenting: %s", exc)

    def _uninstrument(self, **kwargs: Any) -> None:
        from . import _api

        _api.uninstrument()


__all__ = ["E6dataInstrumentor"]
