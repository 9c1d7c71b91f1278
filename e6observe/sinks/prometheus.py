"""Prometheus: e6observe's own registry, the collector over the recorder, and its endpoint.

The scrape model (what a scrape reads from the recorder and how it is rendered) is
``sinks/scrape.py``; multi-process mode (every worker's state merged at scrape time) is
``sinks/multiprocess.py``. This module is the sink: it owns the registry /metrics serves,
registers the collector of the mode in use and the per-process readers (watcher, runtime,
pools, cluster), starts the HTTP endpoint and, in multi-process mode, publishes this process's
state at every :meth:`PrometheusSink.flush`.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Iterable, Optional

from prometheus_client.core import CollectorRegistry, Metric

from .. import _fork
from .._safe import contain
from ..config import Options
from .scrape import RecorderCollector

# The renderers the pool hook and the probe import from here.
from .scrape import counter_family as counter_family
from .scrape import histogram_family as histogram_family

_log = logging.getLogger("e6observe")


def _names_taken(registry: Any, collector: Any) -> frozenset[str]:
    """Family names ``collector`` yields that another collector of ``registry`` already has."""
    if registry is None:
        return frozenset()
    # Collected, not read from the registry's name index: collectors without describe() are
    # indexed only when the registry auto-describes. Once, at instrument() time.
    existing = {f.name for f in registry.collect()}
    return frozenset(f.name for f in collector.collect() if f.name in existing)


class _Without:
    """A collector minus some families (see :meth:`PrometheusSink.add_process_collector`)."""

    def __init__(self, inner: Any, names: frozenset[str]) -> None:
        self.inner = inner
        self.names = names

    def collect(self) -> Iterable[Metric]:
        return [f for f in self.inner.collect() if f.name not in self.names]


class PrometheusSink:
    """The Prometheus side of e6observe: own registry, collector, optional HTTP endpoint.

    ``options``: the validated :class:`~e6observe.config.Options` (None: the defaults, with
    ``multiprocess_dir`` from ``$PROMETHEUS_MULTIPROC_DIR``); the sink reads the endpoint's
    (``prometheus_*``, ``tls_*``, ``basic_auth``, ``http_*``), ``registry`` and
    ``multiprocess_dir``. Other components register their own collectors into :attr:`registry`.
    """

    def __init__(self, recorder: Any, options: Optional[Options] = None) -> None:
        self.recorder = recorder
        if options is None:
            options = Options(multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None)
        self.options = options
        reg = options.registry
        #: The registry /metrics serves. Never prometheus_client's global REGISTRY unless the
        #: user passed it explicitly.
        self.registry: CollectorRegistry = reg if reg is not None else CollectorRegistry()
        mp_dir = options.multiprocess_dir
        self.multiprocess_dir: Optional[str] = mp_dir or None
        self.writer: Any = None
        if self.multiprocess_dir:
            from .multiprocess import (
                MultiProcessCollector,
                ProcessStateWriter,
                UnusableDirectory,
                report_unusable,
            )

            try:
                self.writer = ProcessStateWriter(self.multiprocess_dir, recorder)
            except UnusableDirectory as exc:
                report_unusable(exc)  # one warning; this process's own metrics are served
                self.multiprocess_dir = None
        if self.writer is not None:
            self.collector: Any = MultiProcessCollector(self.multiprocess_dir or "", own=self.writer)
        else:
            self.collector = RecorderCollector(recorder)
        try:
            self.registry.register(self.collector)
        except Exception:
            if self.writer is not None:
                self.writer.close()
            raise
        self.server: Any = None
        self._lock = threading.Lock()
        self._bind_failed_logged = False
        self._registered: list[Any] = []
        _track(self)

    @property
    def multiprocess(self) -> bool:
        """True when scrapes merge every worker's state from ``multiprocess_dir``."""
        return self.writer is not None

    def add_process_collector(self, collector: Any) -> None:
        """Export a collector of this process's own readings (runtime, watcher, pools).

        Single-process: it is registered into :attr:`registry` (and unregistered by
        :meth:`close`). Multi-process: it is *not* registered; its samples go into this
        process's state file at every :meth:`flush`, and one scrape shows every live process's
        samples with a ``pid`` label — each worker's memory and watcher heartbeat, not just
        those of the process that happens to serve /metrics. Family names must come from the
        metric table and not be one of this sink's own.
        """
        if self.writer is not None:
            self.writer.add_process_collector(collector)
            return
        if getattr(collector, "registry", False) is None:
            collector.registry = self.registry  # (the runtime collector defers to others there)
        # Only a registry passed in can hold families of others: e6observe's own holds its own
        # collectors, whose names the metric table keeps apart (and collecting every family
        # once more at start-up cost about 0.05 MiB of RSS).
        own = self.options.registry is None
        taken = frozenset() if own else _names_taken(self.registry, collector)
        if taken:
            # A shared registry (often prometheus_client.REGISTRY) that already exports
            # process_* / python_gc_*: a second family of the same name makes the whole
            # exposition invalid, so those readings are theirs and ours are left out.
            _log.info(
                "e6observe: the registry already exports %s; e6observe leaves its own out",
                ", ".join(sorted(taken)),
            )
            collector = _Without(collector, taken)
        self.registry.register(collector)
        self._registered.append(collector)

    def start(self) -> PrometheusSink:
        """Start the HTTP endpoint if ``prometheus_port`` is set.

        Raises ``e6observe.endpoint.server.MetricsServerError`` (an ``OSError`` naming the address) when
        the port cannot be bound; ``instrument()`` turns that into one log line and a count. In
        multi-process mode a taken port is the normal case for all workers but one: it is not
        an error, and :meth:`flush` retries so another worker takes over when the serving one
        exits.
        """
        o = self.options
        port = o.prometheus_port
        if port is None:
            return self
        from ..endpoint.server import MetricsServer, MetricsServerError

        with self._lock:
            if self.server is not None and self.server.running:
                return self
            served: Any = self.registry
            if o.prometheus_low_cardinality:
                from .lowcard import LowCardinalityRegistry

                served = LowCardinalityRegistry(self.registry)  # the one seam (sinks/lowcard.py)
            srv = MetricsServer(
                served,
                addr=o.prometheus_addr or "127.0.0.1",
                port=int(port),
                certfile=o.tls_certfile,
                keyfile=o.tls_keyfile,
                client_cafile=o.tls_client_cafile,
                basic_auth=o.basic_auth,
                max_head_bytes=o.http_max_head_bytes,
                head_timeout=o.http_head_timeout,
                write_timeout=o.http_write_timeout,
            )
            self.server = srv
            try:
                srv.start()
            except MetricsServerError:
                if not self.multiprocess:
                    raise
                if not self._bind_failed_logged:
                    self._bind_failed_logged = True
                    _log.info(
                        "e6observe: %s is served by another process (multi-process mode);"
                        " this process will take over if it goes away",
                        srv.url,
                    )
        return self

    def flush(self) -> None:
        """Publish this process's state (multi-process mode); called once per watcher interval.

        Also retries binding the endpoint in multi-process mode when another worker held it.
        Never raises.
        """
        with contain("sink.multiprocess"):
            if self.writer is not None:
                self.writer.flush()
                srv = self.server
                if srv is not None and not srv.running:
                    try:
                        srv.start()
                    except OSError:
                        pass

    def set_recorder(self, recorder: Any) -> None:
        """Read from another recorder from now on (e.g. a fresh one in a forked child)."""
        self.recorder = recorder
        if self.writer is not None:
            self.writer.set_recorder(recorder)
        else:
            self.collector.recorder = recorder

    def after_fork_in_child(self) -> None:
        """In a forked child: drop the parent's listening socket copy, re-key the state file."""
        with contain("sink.prometheus"):
            srv = self.server
            if srv is not None:
                srv.abandon()
                self.server = None
            if self.writer is not None:
                self.writer.after_fork_in_child()
                # The collector's cache and lock were the parent's; start clean.
                self.collector.reset_after_fork()
        # Another thread may have held this lock at fork time; the child's copy would stay held.
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop the endpoint, unregister the collector, publish the final state. Idempotent."""
        _LIVE.discard(self)
        with contain("sink.prometheus"):
            srv, self.server = self.server, None
            if srv is not None:
                srv.close()
        for c in [self.collector] + self._registered:
            with contain("sink.prometheus"):
                try:
                    self.registry.unregister(c)
                except KeyError:
                    pass
        self._registered.clear()
        if self.writer is not None:
            with contain("sink.multiprocess"):
                self.writer.close()


# Sinks alive in this process, for the fork reset. A plain set: close() removes a sink, and a
# sink that is never closed is the instrumentation's own (it lives as long as the process).
_LIVE: set[PrometheusSink] = set()


def _after_fork_in_child() -> None:
    for sink in list(_LIVE):
        sink.after_fork_in_child()


def _track(sink: PrometheusSink) -> None:
    _LIVE.add(sink)
    # Registered on first use rather than at import (nothing happens at import), in the sinks
    # phase: after the stores it reads were reset, before the threads restart.
    _fork.register("sinks", _after_fork_in_child, "fork.sink.prometheus")


__all__ = ["PrometheusSink"]
