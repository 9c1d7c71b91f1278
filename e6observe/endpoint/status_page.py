"""The status page's HTML, rendered on the server with the state it has at the moment of the
request, from the bounded latency history (``history.py``) for its chart.

The page is useful before (and without) any JavaScript: the tiles, the switch timeline with a
time axis, the latency chart per colour, the switch table and the recent events are all in the
HTML as served. ``static/status.js`` then keeps it live: it follows ``/events`` and ``/status``
for the tiles and tables, and takes the charts from a fresh copy of this page every few seconds,
so the charts are drawn by one piece of code only (this one).

Everything is written through :func:`html.escape`; the charts are inline SVG with presentation
attributes and classes (the page's Content-Security-Policy allows no inline style). Nothing
rendered is a secret: strategies, counts, durations and process identity only.
"""

from __future__ import annotations

import html
import math
import time
from typing import Any, Iterable, Optional, Sequence

from .. import metrics as M

# The history is started with the endpoint (it must see the queries before the first visit);
# this module, the page itself, is loaded at the first request (endpoint/routes.py).
from .history import KEEP_SAMPLES as KEEP_SAMPLES
from .history import SAMPLE_SECONDS as SAMPLE_SECONDS
from .history import LatencyHistory as LatencyHistory

#: The charts cover at most this many seconds back from now.
WINDOW_SECONDS = 600.0
#: Events listed in the served page.
PAGE_EVENTS = 50
#: Chart geometry (SVG user units; the SVG scales to the page's width).
_W, _PAD_L, _PAD_R = 1000.0, 56.0, 12.0
_STRIP_H = 64.0
_CHART_H = 200.0


# -- formatting --------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def clock(unix: float) -> str:
    """``HH:MM:SS`` in the server's local time ("–" for no time)."""
    return time.strftime("%H:%M:%S", time.localtime(unix)) if unix else "–"


def clock_ms(unix: float) -> str:
    return clock(unix) + f".{int(unix * 1000) % 1000:03d}" if unix else "–"


def fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "–"
    if s < 0.001:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1000:.1f} ms"
    return f"{s:.2f} s"


def fmt_bytes(n: Optional[int]) -> str:
    if not n:
        return "–"
    v, units, i = float(n), ["B", "KiB", "MiB", "GiB"], 0
    while v >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return f"{v:.{1 if i else 0}f} {units[i]}"


def fmt_ago(unix: float, now: float) -> str:
    if not unix:
        return ""
    s = max(0.0, now - unix)
    if s < 1:
        return "just now"
    if s < 90:
        return f"{round(s)} s ago"
    if s < 5400:
        return f"{round(s / 60)} min ago"
    return f"{round(s / 3600)} h ago"


def _strategy(s: Any) -> str:
    return s if s in M.STRATEGIES else (str(s) if s else "none")


def _kind(k: Any) -> str:
    return str(k or "").replace("EVENT_KIND_", "").lower()


def process_scope(ev: dict[str, Any]) -> bool:
    """True for an event about the process's own strategy cache. Events of the cluster manager's
    cache or of one connection (``scope`` ``cluster_manager`` / ``connection``) are not the
    process's colour: they stay out of the timeline, the switch table and the switch count."""
    return str(ev.get("scope") or "process") == "process"


def _ticks(start: float, end: float, most: int = 7) -> list[float]:
    """Round clock times between ``start`` and ``end`` for an axis (at most ``most``)."""
    span = max(end - start, 1.0)
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if span / step <= most - 1:
            break
    first = math.ceil(start / step) * step
    return [first + i * step for i in range(int((end - first) // step) + 1)]


def _x(t: float, start: float, end: float) -> float:
    return _PAD_L + (t - start) / max(end - start, 1e-9) * (_W - _PAD_L - _PAD_R)


def _axis(start: float, end: float, y: float) -> list[str]:
    out = [f'<line class="axis" x1="{_PAD_L:.1f}" y1="{y:.1f}" x2="{_W - _PAD_R:.1f}" y2="{y:.1f}"/>']
    for t in _ticks(start, end):
        x = _x(t, start, end)
        out.append(f'<line class="tick" x1="{x:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y + 4:.1f}"/>')
        out.append(
            f'<text class="tick-label" x="{x:.1f}" y="{y + 16:.1f}" '
            f'text-anchor="middle">{_e(clock(t))}</text>'
        )
    return out


def window(
    events: Sequence[dict[str, Any]], history: Sequence[tuple[float, Any]], now: float, since: float
) -> tuple[float, float]:
    """The charts' common time range: from the first thing known (an event, a sample, the start
    of watching), at most :data:`WINDOW_SECONDS` back, to ``now``."""
    known = [since] + [float(e.get("time_unix") or now) for e in events]
    if history:
        known.append(history[0][0] - SAMPLE_SECONDS)
    start = max(min(known), now - WINDOW_SECONDS)
    return min(start, now - 10.0), now


# -- the charts --------------------------------------------------------------------------------
def timeline_svg(
    events: Sequence[dict[str, Any]], active: str, start: float, end: float, since: float = 0.0
) -> str:
    """Which colour was active when (a bar per interval, from ``since``: when this process
    began to be watched), a mark at each switch, a time axis."""
    switches = [
        e
        for e in events
        if _kind(e.get("kind")) in ("applied", "detected")
        and process_scope(e)
        and float(e.get("time_unix") or 0) > 0
    ]
    switches.sort(key=lambda e: float(e["time_unix"]))
    segs: list[tuple[float, float, str]] = []
    if switches:
        first = switches[0]
        before = _strategy(first.get("from_strategy") or "none")
        t0 = float(first["time_unix"])
        if t0 > start:
            segs.append((start, t0, before))
        for i, e in enumerate(switches):
            t = max(float(e["time_unix"]), start)
            t_next = float(switches[i + 1]["time_unix"]) if i + 1 < len(switches) else end
            if t_next > start:
                segs.append((t, t_next, _strategy(e.get("to_strategy") or e.get("strategy"))))
    else:
        segs.append((start, end, _strategy(active)))
    out = [
        f'<svg id="timeline-chart" class="chart" viewBox="0 0 {_W:.0f} {_STRIP_H:.0f}" '
        f'role="img" aria-label="active strategy over time, {_e(clock(start))} to '
        f'{_e(clock(end))}">'
    ]
    if switches:  # events from before ``since`` (a ring mounted late) are drawn all the same
        since = min(since, float(switches[0]["time_unix"]))
    for a, b, s in segs:
        a = max(a, start, since)
        if b <= a:
            continue
        x1, x2 = _x(a, start, end), _x(min(b, end), start, end)
        out.append(
            f'<rect class="seg s-{_e(s)}" x="{x1:.1f}" y="8" width="{max(x2 - x1, 1.0):.1f}" '
            f'height="24"><title>{_e(s)} from {_e(clock(a))}</title></rect>'
        )
    for e in switches:
        t = float(e["time_unix"])
        if t >= start:
            x = _x(t, start, end)
            out.append(f'<line class="switch-mark" x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="36"/>')
    out.append(f'<text class="axis-label" x="{_PAD_L - 6:.1f}" y="25" text-anchor="end">active</text>')
    out += _axis(start, end, 40.0)
    out.append("</svg>")
    return "".join(out)


def _axis_seconds(v: float) -> str:
    if not v:
        return "0"
    if v < 0.001:
        return f"{v * 1e6:.0f} µs"
    if v < 0.01:
        return f"{v * 1000:.1f} ms"
    if v < 1:
        return f"{v * 1000:.0f} ms"
    return f"{v:g} s"


def _nice_ceiling(v: float) -> float:
    if v <= 0:
        return 0.001
    scale = 10.0 ** math.floor(math.log10(v))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * scale >= v:
            return m * scale
    return 10.0 * scale


def latency_svg(
    history: Sequence[tuple[float, dict[str, tuple[int, float, float]]]], start: float, end: float
) -> str:
    """Mean (solid) and p99 (dashed) query latency per colour per sample interval."""
    top, bottom = 10.0, _CHART_H - 28.0
    pts = [(t, p) for t, p in history if t >= start]
    peak = max(
        [v[2] for _, p in pts for v in p.values()] + [v[1] for _, p in pts for v in p.values()] + [0.0]
    )
    ymax = _nice_ceiling(peak)

    def y(v: float) -> float:
        return bottom - (v / ymax) * (bottom - top)

    out = [
        f'<svg id="latency-chart" class="chart" viewBox="0 0 {_W:.0f} {_CHART_H:.0f}" role="img" '
        f'aria-label="query latency per strategy over time">'
    ]
    for frac in (0.0, 0.5, 1.0):
        v = ymax * frac
        out.append(
            f'<line class="grid" x1="{_PAD_L:.1f}" y1="{y(v):.1f}" x2="{_W - _PAD_R:.1f}" y2="{y(v):.1f}"/>'
        )
        out.append(
            f'<text class="tick-label" x="{_PAD_L - 6:.1f}" y="{y(v) + 4:.1f}" '
            f'text-anchor="end">{_e(_axis_seconds(v))}</text>'
        )
    drawn = 0
    for strategy in M.STRATEGIES:
        for idx, cls in ((1, "mean"), (2, "p99")):
            runs: list[list[str]] = [[]]
            for t, p in pts:
                if strategy in p:
                    runs[-1].append(f"{_x(t, start, end):.1f},{y(p[strategy][idx]):.1f}")
                elif runs[-1]:
                    runs.append([])
            for run in runs:
                if len(run) == 1:  # a lone sample: a dot
                    cx, cy = run[0].split(",")
                    out.append(f'<circle class="lat {cls} s-{strategy}" cx="{cx}" cy="{cy}" r="3"/>')
                    drawn += 1
                elif run:
                    out.append(f'<polyline class="lat {cls} s-{strategy}" points="{" ".join(run)}"/>')
                    drawn += 1
    if not drawn:
        out.append(
            f'<text class="empty" x="{_W / 2:.0f}" y="{(top + bottom) / 2:.0f}" '
            'text-anchor="middle">no queries finished yet</text>'
        )
    out += _axis(start, end, bottom)
    out.append("</svg>")
    return "".join(out)


def legend() -> str:
    items = []
    for s in M.STRATEGIES:
        items.append(
            f'<span class="key"><span class="swatch s-{s}"></span>{s} mean</span>'
            f'<span class="key"><span class="swatch dashed s-{s}"></span>{s} p99</span>'
        )
    return "".join(items)


# -- the page ----------------------------------------------------------------------------------
def _tile(label: str, body: str) -> str:
    return f'<div class="tile"><div class="label">{_e(label)}</div>{body}</div>'


def _describe(ev: dict[str, Any]) -> str:
    k = _kind(ev.get("kind"))
    frm, to = _strategy(ev.get("from_strategy")), _strategy(ev.get("to_strategy"))
    if k == "applied":
        drain = ev.get("drain_seconds")
        return f"{frm} → {to} ({ev.get('cause') or '?'}" + (
            f", drained {fmt_seconds(float(drain))})" if drain is not None else ")"
        )
    if k == "announced":
        return f"announced {to} (active {frm})"
    if k == "detected":
        return f"detected {_strategy(ev.get('to_strategy') or ev.get('strategy'))}"
    if k == "mismatch":
        return f"456 mismatch: sent {_strategy(ev.get('strategy'))} on {ev.get('method') or '?'}"
    if k == "cache_cleared":
        return f"strategy cache cleared (was {_strategy(ev.get('from_strategy') or ev.get('strategy'))})"
    if k == "retry":
        return f"retry #{ev.get('attempt') or '?'} ({ev.get('reason') or '?'})"
    if k == "suspended_seen":
        return f"cluster suspended (503 on {ev.get('method') or 'status'})"
    if k == "resume_started":
        return "cluster resume started"
    if k == "resume_finished":
        took = ev.get("duration_seconds")
        return f"cluster resume {ev.get('outcome') or '?'}" + (
            f" after {fmt_seconds(float(took))}" if took is not None else ""
        )
    if k == "strategy_rejected":
        return f"strategy value refused ({ev.get('reason') or '?'})"
    return k


def describe(ev: dict[str, Any]) -> str:
    """An event's line in the event list; a scoped event says its scope (`` [connection]``)."""
    return _describe(ev) + ("" if process_scope(ev) else f" [{ev.get('scope')}]")


def cluster_text(cl: dict[str, Any]) -> str:
    """The ``cluster`` tile: the last status seen, resumes by outcome, the last resume."""
    resumes = cl.get("resumes") or {}
    text = (
        str(cl.get("status") or "unknown")
        + (", resuming" if cl.get("resuming") else "")
        + "; resumes "
        + ", ".join(f"{o} {int(resumes.get(o) or 0)}" for o in ("ok", "failed", "timeout"))
    )
    if cl.get("last_resume_outcome"):
        text += (
            f"; last {cl['last_resume_outcome']} in {fmt_seconds(float(cl.get('last_resume_seconds') or 0))}"
        )
    return text


def caches_text(ca: dict[str, Any]) -> str:
    """The ``caches`` tile: the process cache and the cluster manager's cache side by side."""
    return f"process {ca.get('process') or 'none'}, cluster manager {ca.get('cluster_manager') or 'none'}" + (
        " (split)" if ca.get("split") else ""
    )


def source_line(src: dict[str, Any]) -> str:
    parts = [
        src.get("service_name"),
        f"pid {src.get('pid', '?')}",
        src.get("host_name"),
        f"connector {src['connector_version']}" if src.get("connector_version") else "",
        f"e6observe {src['e6observe_version']}" if src.get("e6observe_version") else "",
    ]
    return " · ".join(str(p) for p in parts if p)


def render(doc: dict[str, Any], history: Iterable[tuple[float, Any]] = (), since: float = 0.0) -> str:
    """The whole page for the ``StatusSnapshot`` JSON ``doc`` (``status.build_status``)."""
    now = float(doc.get("time_unix") or time.time())
    events = sorted(
        (e for e in doc.get("recent_events") or [] if isinstance(e, dict)),
        key=lambda e: int(e.get("seq") or 0),
    )
    hist = list(history)
    start, end = window(events, hist, now, since or now)
    active = doc.get("active") or "none"
    active_s = "" if active == "none" else _strategy(active)
    pending = doc.get("pending") or ""
    inflight = doc.get("in_flight") or {}
    applied = [e for e in events if _kind(e.get("kind")) == "applied" and process_scope(e)]
    last_seq = max([int(e.get("seq") or 0) for e in events] + [0])
    acc = doc.get("events") or {}
    mem = doc.get("memory") or None
    w = doc.get("watcher") or None
    errs = doc.get("internal_errors") or {}
    caches = doc.get("caches") or {}
    cluster, split = cluster_text(doc.get("cluster") or {}), "yes" if caches.get("split") else "no"

    if w:
        age = now - float(w.get("last_run_unix") or 0) if w.get("last_run_unix") else math.inf
        healthy = bool(w.get("running")) and age < max(5.0, 3 * float(w.get("interval_seconds") or 1))
        w_health = "ok" if healthy else "stale"
        w_text = ("running" if w.get("running") else "stopped") + (
            f", last beat {fmt_ago(float(w['last_run_unix']), now)}"
            if w.get("last_run_unix")
            else ", no beat yet"
        )
    else:
        w_health, w_text = "unknown", "not running in this process"
    err_total = sum(int(v) for v in errs.values())
    dropped = sum(int(v) for v in (acc.get("dropped") or {}).values())
    accounting = (
        f"{int(acc.get('emitted') or 0)} emitted, {int(acc.get('in_ring') or 0)} kept, "
        f"{int(acc.get('evicted') or 0)} evicted, {dropped} dropped"
    )
    errors = str(err_total) + (
        " (" + ", ".join(f"{k} {v}" for k, v in errs.items()) + ")" if err_total else ""
    )
    body_attrs = (
        f'data-time="{_e(now)}" data-seq="{last_seq}" '
        f'data-switch-count="{int(doc.get("switch_count") or 0)}" '
        f'data-mismatch-count="{int(doc.get("mismatch_count") or 0)}"'
    )
    no_switches = " hidden" if applied else ""
    timeline = timeline_svg(events, active, start, end, since)
    span = f"{clock(start)} – {clock(end)}"

    tiles = "".join(
        [
            _tile(
                "active strategy",
                f'<div id="active" class="strategy big" data-strategy="'
                f'{_e(active_s or "none")}">{_e(active_s or "none")}</div>',
            ),
            _tile(
                "pending",
                f'<div id="pending" class="strategy big" data-strategy="{_e(pending)}">'
                f'{_e(pending or "none")}</div><div id="pending-age" class="muted">'
                + (
                    _e("waiting " + fmt_seconds(float(doc.get("pending_age_seconds") or 0)))
                    if pending
                    else ""
                )
                + "</div>",
            ),
            _tile(
                "switches",
                f'<div id="switch-count" class="big">{int(doc.get("switch_count") or 0)}'
                f'</div><div id="last-switch" class="muted" data-unix="'
                f'{_e(doc.get("last_switch_unix") or 0)}">'
                + (
                    _e("last " + fmt_ago(float(doc["last_switch_unix"]), now))
                    if doc.get("last_switch_unix")
                    else "no switch yet"
                )
                + "</div>",
            ),
            _tile(
                "456 mismatches",
                f'<div id="mismatch-count" class="big">{int(doc.get("mismatch_count") or 0)}</div>',
            ),
            _tile(
                "queries in flight",
                f'<div id="in-flight" class="big">'
                f'{sum(int(v or 0) for v in inflight.values())}</div><div id="in-flight-detail" '
                f'class="muted">' + _e(", ".join(f"{k} {v}" for k, v in inflight.items() if v)) + "</div>",
            ),
        ]
    )
    rows = "".join(
        f'<tr class="switch" data-seq="{int(e.get("seq") or 0)}"><td>'
        f"{_e(clock_ms(float(e.get('time_unix') or 0)))}</td><td>"
        f'<span class="pill s-{_e(_strategy(e.get("from_strategy")))}">'
        f"{_e(_strategy(e.get('from_strategy')))}</span><span> → </span>"
        f'<span class="pill s-{_e(_strategy(e.get("to_strategy")))}">'
        f"{_e(_strategy(e.get('to_strategy')))}</span></td><td>{_e(e.get('cause') or '–')}</td>"
        f"<td>{_e(fmt_seconds(e['drain_seconds']) if e.get('drain_seconds') is not None else '–')}"
        f"</td><td>{int(e.get('pinned_queries') or 0)}</td></tr>"
        for e in reversed(applied)
    )
    lat_rows = "".join(
        f'<tr><td>{_e(lat.get("kind"))}</td><td><span class="pill s-{_e(_strategy(lat.get("strategy")))}">'
        f"{_e(_strategy(lat.get('strategy')))}</span></td><td>{int(lat.get('count') or 0)}</td>"
        + "".join(
            f"<td>{_e(fmt_seconds(lat.get(q)) if lat.get('count') else '–')}</td>"
            for q in ("p50_seconds", "p90_seconds", "p99_seconds")
        )
        + "</tr>"
        for lat in doc.get("latency") or []
    )
    ev_items = "".join(
        f'<li class="ev ev-{_e(_kind(e.get("kind")))}" data-seq="{int(e.get("seq") or 0)}">'
        f'<span class="t">{_e(clock_ms(float(e.get("time_unix") or 0)))}</span>'
        f'<span class="k">{_e(_kind(e.get("kind")))}</span><span class="d">{_e(describe(e))}</span></li>'
        for e in list(reversed(events))[:PAGE_EVENTS]
    )

    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>e6observe status</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/status.css">
<script src="static/status.js" defer></script>
</head>
<body {body_attrs}>
<header>
  <h1>e6observe</h1>
  <div id="source" class="muted">{_e(source_line(doc.get("source") or {}))}</div>
  <div id="conn" class="conn" data-state="served" title="live updates">as of {_e(clock(now))}</div>
</header>
<main>
  <section class="tiles" id="tiles">{tiles}</section>
  <section>
    <h2>Switch timeline <span class="muted" id="timeline-range">{_e(span)}</span></h2>
    <div id="timeline" data-chart="timeline">{timeline}</div>
    <table id="switches">
      <thead><tr><th>time</th><th>switch</th><th>cause</th><th>drain</th><th>pinned queries</th></tr></thead>
      <tbody>{rows}</tbody>
    </table>
    <p id="no-switches" class="muted"{no_switches}>No switch seen by this process yet.</p>
  </section>
  <section>
    <h2>Latency by strategy <span class="muted">queries finished per {SAMPLE_SECONDS:g} s interval</span></h2>
    <div id="latency-over-time" data-chart="latency">{latency_svg(hist, start, end)}</div>
    <div class="legend">{legend()}</div>
    <table id="latency">
      <thead><tr><th>kind</th><th>strategy</th><th>count</th><th>p50</th><th>p90</th><th>p99</th></tr></thead>
      <tbody>{lat_rows}</tbody>
    </table>
  </section>
  <section class="two">
    <div>
      <h2>Process</h2>
      <dl id="process">
        <dt>memory (RSS)</dt><dd id="mem-rss">{_e(fmt_bytes(mem.get("rss_bytes")) if mem else "–")}</dd>
        <dt>memory (unique)</dt><dd id="mem-uss">{_e(fmt_bytes(mem.get("uss_bytes")) if mem else "–")}</dd>
        <dt>watcher</dt><dd id="watcher" data-health="{w_health}">{_e(w_text)}</dd>
        <dt>events</dt><dd id="events-accounting">{accounting}</dd>
        <dt>internal errors</dt><dd id="internal-errors">{_e(errors)}</dd>
        <dt>cluster (auto-resume)</dt><dd id="cluster">{_e(cluster)}</dd>
        <dt>strategy caches</dt><dd id="caches" data-split="{split}">{_e(caches_text(caches))}</dd>
      </dl>
    </div>
    <div>
      <h2>Recent events</h2>
      <ol id="events" class="events" reversed>{ev_items}</ol>
    </div>
  </section>
</main>
<footer class="muted">Updated <span id="updated">{_e(clock_ms(now))}</span>.
Data from <code>/status</code> and <code>/events</code> on this endpoint.</footer>
</body>
</html>
"""


__all__ = [
    "LatencyHistory",
    "render",
    "timeline_svg",
    "latency_svg",
    "window",
    "describe",
    "cluster_text",
    "caches_text",
    "process_scope",
]
