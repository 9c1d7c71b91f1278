"""The one configuration object the dashboards and alert rules are generated from.

Every selector, threshold and window that appears in ``dashboards/json/*.json`` or
``dashboards/rules/e6observe.rules.yaml`` comes from a :class:`Config` field, so that a
deployment can change one value (say, which ``job`` counts as an e6data client, or how long a
drain may take) and regenerate everything consistently, in the spirit of the ``_config`` object
of kubernetes-mixin and node-mixin. ``docs/alerts.md`` documents each field next to the alert
that uses it.

Durations are PromQL duration strings (``30s``, ``5m``, ``1h``); ``for`` durations may be
``0m`` for event-like alerts whose lookback window already keeps them active.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any, Tuple

from e6observe import metrics as M

_DURATION = re.compile(r"^(?:\d+(?:ms|[smhdwy]))+$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class ConfigError(ValueError):
    """A :class:`Config` value that cannot produce valid PromQL or rule files."""


def duration_seconds(text: str) -> float:
    """Seconds in a PromQL duration string such as ``1h30m`` (validated)."""
    if not _DURATION.match(text):
        raise ConfigError(f"not a PromQL duration: {text!r} (expected e.g. '30s', '5m', '1h')")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * scale[u] for n, u in re.findall(r"(\d+)(ms|[smhdwy])", text))


@dataclass(frozen=True)
class Config:
    """Selectors, thresholds and windows for every generated dashboard query and alert."""

    # --- which series count, and what identifies a client -------------------------------------
    #: Label matchers (PromQL, without braces) restricting alerts and the dashboards' variable
    #: queries to e6observe targets, e.g. ``'job=~"orders|billing"'``. Empty: every target.
    selector: str = ""
    #: Labels that identify one client process (one connector strategy cache). Alerts about a
    #: single client aggregate ``by`` these; dashboards draw one series per combination.
    client_labels: Tuple[str, ...] = ("job", "instance", "pod")
    #: Labels that identify one population of clients expected to follow the same e6data
    #: cluster. Split brain means clients within one population disagree on the active colour.
    population_labels: Tuple[str, ...] = ("job",)
    #: kube-prometheus-stack's Alertmanager groups and inhibits by ``namespace`` and by the
    #: cluster label (``cluster`` unless relabelled): every alert's aggregation keeps both, and
    #: the dashboards have a variable for each. Series without them simply lack them.
    cluster_label: str = "cluster"
    namespace_label: str = "namespace"

    # --- rule group and runbook ----------------------------------------------------------------
    rule_group: str = "e6observe"
    #: Recording rules (``e6observe/mixin/records.py``, group ``<rule_group>.records``): the
    #: window of every recorded rate (the dashboards' histogram and rate panels read them) and
    #: how often the group is evaluated.
    record_window: str = "5m"
    record_interval: str = "1m"
    #: Dashboards: how many clients a per-client panel draws while many are selected (the
    #: ``topk`` of the fleet; a chosen pod or instance is drawn whatever its rank). At 1 000
    #: pods one line per client made those panels take over a second and show nothing legible.
    top_clients: int = 10
    #: Base URL of docs/runbook.md as published; each alert links ``<base>#<alertname lower>``.
    runbook_url: str = "https://github.com/e6data/e6observe/blob/main/docs/runbook.md"

    # --- strategy switches -----------------------------------------------------------------------
    #: E6dataStrategySwitched stays active this long after a switch.
    switch_window: str = "5m"
    switch_for: str = "0m"
    #: E6dataStrategyFlapping: at least ``flapping_threshold`` switches of one client within
    #: ``flapping_window`` (counted with ``increase()``, robust to restarts).
    flapping_window: str = "15m"
    flapping_threshold: int = 3
    flapping_for: str = "5m"
    #: E6dataStrategySplitBrain: clients of one population disagree on the active colour for
    #: longer than a drain should take.
    split_brain_for: str = "10m"
    #: E6dataStrategySwitchStuckPending: an announced switch waited longer than this (seconds).
    pending_stuck_seconds: float = 300.0
    pending_for: str = "5m"

    # --- mismatches and queries ------------------------------------------------------------------
    #: E6dataStrategyMismatchRateHigh: 456 mismatches per RPC over ``mismatch_window``
    #: (0.05 = the 5 % the connector's own documentation names).
    mismatch_ratio: float = 0.05
    mismatch_window: str = "5m"
    mismatch_for: str = "5m"
    #: E6dataQueriesFailedMidSwitch: more than ``interrupted_threshold`` queries failed because
    #: a switch landed while they ran, within ``interrupted_window``.
    interrupted_threshold: float = 0.0
    interrupted_window: str = "10m"
    interrupted_for: str = "0m"
    #: E6dataQueryLatencyHigh: the ``latency_quantile`` of query duration above
    #: ``latency_threshold_seconds`` (per population and strategy).
    latency_quantile: float = 0.99
    latency_threshold_seconds: float = 5.0
    latency_window: str = "5m"
    latency_for: str = "10m"
    #: E6dataQueryErrorRateHigh: share of queries ending in ``outcome="error"``.
    error_ratio: float = 0.05
    error_window: str = "5m"
    error_for: str = "10m"

    # --- client health -----------------------------------------------------------------------------
    #: E6observeMemoryGrowth: resident memory rose by more than ``memory_growth_bytes`` above its
    #: minimum within ``memory_growth_window``, and keeps doing so for ``memory_growth_for``.
    memory_growth_bytes: float = 256 * 1024 * 1024
    memory_growth_window: str = "1h"
    memory_growth_for: str = "15m"
    #: E6dataQueryMapLeak: the connector's query-to-strategy map never fell below this many
    #: entries within ``query_map_window``, for ``query_map_for`` on end (uncleared queries
    #: leak memory and block graceful flips). The ``for`` keeps a young series, whose window
    #: holds only a few samples, from firing at once.
    query_map_entries: float = 1000.0
    query_map_window: str = "15m"
    query_map_for: str = "15m"
    #: E6observeTargetDown: a target that exported e6observe metrics within ``down_lookback``
    #: is failing its scrapes.
    down_lookback: str = "1h"
    down_for: str = "5m"
    #: E6observeWatcherStalled: the watcher thread's heartbeat is older than this (seconds).
    watcher_stale_seconds: float = 120.0
    watcher_for: str = "5m"
    #: E6dataProbeFailing: share of successful probe samples over ``probe_window`` below this.
    probe_success_ratio: float = 0.5
    probe_window: str = "5m"
    probe_for: str = "5m"
    #: E6dataClusterResumeSlow: an auto-resume took longer than this (seconds; one of the
    #: resume histogram's bucket boundaries) within ``resume_window``.
    resume_slow_seconds: float = 120.0
    resume_window: str = "15m"
    resume_slow_for: str = "0m"
    #: E6dataClusterResumeFailed: auto-resumes that failed or timed out within ``resume_window``.
    resume_failed_for: str = "0m"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_window", "_for", "_lookback", "_interval")):
                duration_seconds(value)
            elif f.name.endswith("_label"):
                if not (isinstance(value, str) and _LABEL.match(value)):
                    raise ConfigError(f"{f.name} must be a label name: {value!r}")
            elif f.name.endswith("_labels"):
                if not value or not all(isinstance(v, str) and _LABEL.match(v) for v in value):
                    raise ConfigError(f"{f.name} must be a non-empty tuple of label names: {value!r}")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                if value < 0:
                    raise ConfigError(f"{f.name} must not be negative: {value!r}")
        for name in ("mismatch_ratio", "error_ratio", "probe_success_ratio", "latency_quantile"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in (0, 1]: {getattr(self, name)!r}")
        if self.top_clients < 1:
            raise ConfigError(f"top_clients must be at least 1: {self.top_clients!r}")
        if self.flapping_threshold < 2:
            raise ConfigError("flapping_threshold must be at least 2 (one switch is not flapping)")
        if float(self.resume_slow_seconds) not in M.RESUME_BUCKETS:
            raise ConfigError(
                f"resume_slow_seconds must be a bucket boundary of "
                f"{M.CLUSTER_RESUME_DURATION.prom_name} {M.RESUME_BUCKETS}: "
                f"{self.resume_slow_seconds!r}"
            )
        if "{" in self.selector or "}" in self.selector:
            raise ConfigError(f"selector takes label matchers without braces: {self.selector!r}")

    def with_(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

    @property
    def kept_labels(self) -> Tuple[str, ...]:
        """The labels every alert aggregation keeps (cluster, namespace)."""
        return (self.cluster_label, self.namespace_label)

    def _by(self, labels: Tuple[str, ...]) -> str:
        out = list(self.kept_labels)
        out += [lab for lab in labels if lab not in out]
        return ", ".join(out)

    @property
    def client_by(self) -> str:
        """``cluster, namespace, job, instance, pod``: the grouping clause for one client."""
        return self._by(self.client_labels)

    @property
    def population_by(self) -> str:
        """The grouping clause for one client population (with cluster and namespace)."""
        return self._by(self.population_labels)


#: The configuration the committed dashboards and rule file are generated from.
DEFAULT = Config()
