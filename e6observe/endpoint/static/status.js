// e6observe status page: reads /status, follows /events (server-sent events), renders.
// No framework, no CDN; every value is written with textContent, never as HTML.
"use strict";

(function () {
  const POLL_MS = 5000;          // /status refresh even without events (latency, memory)
  const KEEP_EVENTS = 200;       // events kept in the page
  const state = { snap: null, events: new Map(), lastSeq: 0, source: null, pid: null,
    snapSeq: 0, lastOk: 0, offlineSince: 0 };

  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function strategyName(s) {
    return (s === "blue" || s === "green") ? s : (s ? String(s) : "none");
  }

  function setStrategy(node, s, emptyText) {
    const name = s ? strategyName(s) : "";
    node.dataset.strategy = name;
    node.textContent = name || emptyText;
  }

  function fmtTime(unix) {
    if (!unix) return "–";
    const d = new Date(unix * 1000);
    return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  function fmtClock(unix) {
    return new Date(unix * 1000).toLocaleTimeString([], { hour12: false });
  }

  function fmtAgo(unix) {
    if (!unix) return "";
    const s = Math.max(0, Date.now() / 1000 - unix);
    if (s < 1) return "just now";
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  function fmtSeconds(s) {
    if (s === undefined || s === null) return "–";
    if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
    if (s < 1) return (s * 1000).toFixed(1) + " ms";
    return s.toFixed(2) + " s";
  }

  function fmtBytes(n) {
    if (!n) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function setConn(kind, text) {
    const c = $("conn");
    c.dataset.state = kind;
    c.textContent = text;
  }

  // -- events -------------------------------------------------------------------------------
  // /status and /events speak proto3 JSON: kind is the enum name (EVENT_KIND_APPLIED).
  function kindName(k) {
    return String(k || "").replace(/^EVENT_KIND_/, "").toLowerCase();
  }

  function addEvent(ev) {
    if (!ev || typeof ev.seq !== "number") return false;
    ev.kind = kindName(ev.kind);
    if (state.pid !== null && ev.pid !== undefined && ev.pid !== state.pid) {
      // another process answered (restart): its seq numbers start again
      state.events.clear();
      state.lastSeq = 0;
    }
    if (ev.pid !== undefined) state.pid = ev.pid;
    if (state.events.has(ev.seq)) return false;
    state.events.set(ev.seq, ev);
    if (ev.seq > state.lastSeq) state.lastSeq = ev.seq;
    if (state.events.size > KEEP_EVENTS) {
      const keys = Array.from(state.events.keys()).sort((a, b) => a - b);
      for (const k of keys.slice(0, state.events.size - KEEP_EVENTS)) state.events.delete(k);
    }
    return true;
  }

  function sortedEvents() {
    return Array.from(state.events.values()).sort((a, b) => a.seq - b.seq);
  }

  function describe(ev) {
    switch (ev.kind) {
      case "applied":
        return strategyName(ev.from_strategy) + " → " + strategyName(ev.to_strategy) +
          " (" + (ev.cause || "?") + (ev.drain_seconds !== undefined ? ", drained " + fmtSeconds(ev.drain_seconds) : "") + ")";
      case "announced": return "announced " + strategyName(ev.to_strategy) + " (active " + strategyName(ev.from_strategy) + ")";
      case "detected": return "detected " + strategyName(ev.to_strategy || ev.strategy);
      case "mismatch": return "456 mismatch: sent " + strategyName(ev.strategy) + " on " + (ev.method || "?");
      case "cache_cleared": return "strategy cache cleared (was " + strategyName(ev.from_strategy || ev.strategy) + ")";
      case "retry": return "retry #" + (ev.attempt || "?") + " (" + (ev.reason || "?") + ")";
      case "suspended_seen": return "cluster suspended (503 on " + (ev.method || "status") + ")";
      case "resume_started": return "cluster resume started";
      case "resume_finished": return "cluster resume " + (ev.outcome || "?") +
        (ev.duration_seconds !== undefined ? " after " + fmtSeconds(ev.duration_seconds) : "");
      case "strategy_rejected": return "strategy value refused (" + (ev.reason || "?") + ")";
      default: return String(ev.kind);
    }
  }

  // Events about the cluster manager's own cache or one connection are not the process's
  // colour: they stay out of the switch table, the switch count and the active/pending tiles
  // (the server leaves them out of the timeline chart the same way: status_page.process_scope).
  function processScope(ev) {
    return !ev.scope || ev.scope === "process";
  }

  function renderEvents() {
    const list = $("events");
    const evs = sortedEvents().slice(-50).reverse();
    list.replaceChildren(...evs.map((ev) => {
      const li = el("li", null, "ev ev-" + ev.kind);
      li.dataset.seq = ev.seq;
      const scope = processScope(ev) ? "" : " [" + ev.scope + "]";
      li.append(el("span", fmtTime(ev.time_unix), "t"), el("span", ev.kind, "k"), el("span", describe(ev) + scope, "d"));
      return li;
    }));
  }

  function renderTimeline() {
    const applied = sortedEvents().filter((e) => e.kind === "applied" && processScope(e));
    const body = $("switches").tBodies[0];
    body.replaceChildren(...applied.slice().reverse().map((ev) => {
      const tr = el("tr", null, "switch");
      tr.dataset.seq = ev.seq;
      const sw = el("td");
      sw.append(el("span", strategyName(ev.from_strategy), "pill s-" + strategyName(ev.from_strategy)),
        el("span", " → "), el("span", strategyName(ev.to_strategy), "pill s-" + strategyName(ev.to_strategy)));
      tr.append(el("td", fmtTime(ev.time_unix)), sw, el("td", ev.cause || "–"),
        el("td", ev.drain_seconds !== undefined ? fmtSeconds(ev.drain_seconds) : "–"),
        el("td", ev.pinned_queries || 0));
      return tr;
    }));
    $("no-switches").hidden = applied.length > 0;

  }

  // The tiles agree with the timeline: events newer than the last snapshot are counted in
  // (process-scoped switches only, as the snapshot's switch_count).
  function renderCounts() {
    if (!state.snap) return;
    let switches = state.snap.switch_count || 0, mismatches = state.snap.mismatch_count || 0;
    for (const ev of state.events.values()) {
      if (ev.seq <= state.snapSeq) continue;
      if (ev.kind === "applied" && processScope(ev)) switches++;
      else if (ev.kind === "mismatch") mismatches++;
    }
    $("switch-count").textContent = switches;
    $("mismatch-count").textContent = mismatches;
  }

  // The charts (timeline with its time axis, latency over time) are drawn by the server: take
  // them from a fresh copy of this page.
  let pageInFlight = false;
  async function refreshCharts() {
    if (pageInFlight || !window.DOMParser) return;
    pageInFlight = true;
    try {
      const r = await fetch("./", { cache: "no-store", credentials: "same-origin" });
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      for (const id of ["timeline", "latency-over-time", "timeline-range"]) {
        const fresh = doc.getElementById(id), old = $(id);
        if (fresh && old) old.replaceChildren(...Array.from(fresh.childNodes).map((n) => document.importNode(n, true)));
      }
    } catch (e) {
      // offline: the last charts stay, marked by the page's offline state
    } finally {
      pageInFlight = false;
    }
  }

  // -- snapshot -----------------------------------------------------------------------------
  function renderSnapshot(snap) {
    const src = snap.source || {};
    $("source").textContent = [src.service_name, "pid " + (src.pid ?? "?"), src.host_name,
      src.connector_version ? "connector " + src.connector_version : "",
      src.e6observe_version ? "e6observe " + src.e6observe_version : ""].filter(Boolean).join(" · ");
    setStrategy($("active"), snap.active === "none" ? "" : snap.active, "none");
    setStrategy($("pending"), snap.pending, "none");
    $("pending-age").textContent = snap.pending ? "waiting " + fmtSeconds(snap.pending_age_seconds) : "";
    $("last-switch").textContent = snap.last_switch_unix ? "last " + fmtAgo(snap.last_switch_unix) : "no switch yet";
    $("last-switch").dataset.unix = snap.last_switch_unix || 0;
    const inflight = snap.in_flight || {};
    const total = Object.values(inflight).reduce((a, b) => a + (b || 0), 0);
    $("in-flight").textContent = total;
    $("in-flight-detail").textContent = Object.entries(inflight).filter(([, v]) => v)
      .map(([k, v]) => k + " " + v).join(", ");

    const lat = $("latency").tBodies[0];
    lat.replaceChildren(...(snap.latency || []).map((l) => {
      const tr = el("tr");
      const s = el("td");
      s.append(el("span", strategyName(l.strategy), "pill s-" + strategyName(l.strategy)));
      tr.append(el("td", l.kind), s, el("td", l.count),
        el("td", l.count ? fmtSeconds(l.p50_seconds) : "–"),
        el("td", l.count ? fmtSeconds(l.p90_seconds) : "–"),
        el("td", l.count ? fmtSeconds(l.p99_seconds) : "–"));
      return tr;
    }));

    const mem = snap.memory;
    $("mem-rss").textContent = mem ? fmtBytes(mem.rss_bytes) : "–";
    $("mem-uss").textContent = mem ? fmtBytes(mem.uss_bytes) : "–";
    const w = snap.watcher;
    const wn = $("watcher");
    if (!w) { wn.dataset.health = "unknown"; wn.textContent = "not running in this process"; }
    else {
      const age = w.last_run_unix ? Date.now() / 1000 - w.last_run_unix : Infinity;
      const healthy = w.running && age < Math.max(5, 3 * (w.interval_seconds || 1));
      wn.dataset.health = healthy ? "ok" : "stale";
      wn.textContent = (w.running ? "running" : "stopped") + (w.last_run_unix ? ", last beat " + fmtAgo(w.last_run_unix) : ", no beat yet");
    }
    const acc = snap.events || {};
    const dropped = Object.values(acc.dropped || {}).reduce((a, b) => a + b, 0);
    $("events-accounting").textContent = (acc.emitted ?? 0) + " emitted, " + (acc.in_ring ?? 0) +
      " kept, " + (acc.evicted ?? 0) + " evicted, " + dropped + " dropped";
    const errs = snap.internal_errors || {};
    const errTotal = Object.values(errs).reduce((a, b) => a + b, 0);
    $("internal-errors").textContent = errTotal ? errTotal + " (" + Object.entries(errs).map(([k, v]) => k + " " + v).join(", ") + ")" : "0";

    const cl = snap.cluster || {};
    const resumes = cl.resumes || {};
    $("cluster").textContent = (cl.status || "unknown") + (cl.resuming ? ", resuming" : "") +
      "; resumes " + ["ok", "failed", "timeout"].map((o) => o + " " + (resumes[o] || 0)).join(", ") +
      (cl.last_resume_outcome ? "; last " + cl.last_resume_outcome + " in " + fmtSeconds(cl.last_resume_seconds) : "");
    const ca = snap.caches || {};
    $("caches").textContent = "process " + (ca.process || "none") + ", cluster manager " +
      (ca.cluster_manager || "none") + (ca.split ? " (split)" : "");
    $("caches").dataset.split = ca.split ? "yes" : "no";

    for (const ev of snap.recent_events || []) addEvent(ev);
    state.snapSeq = (snap.events || {}).emitted || 0;
    renderTimeline();
    renderEvents();
    renderCounts();
    $("updated").textContent = fmtTime(snap.time_unix);
  }

  let inFlight = false;
  async function refresh() {
    if (inFlight) return;
    inFlight = true;
    try {
      const r = await fetch("status?events=" + KEEP_EVENTS, { cache: "no-store", credentials: "same-origin" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const snap = await r.json();
      state.snap = snap;
      state.lastOk = snap.time_unix || Date.now() / 1000;
      state.offlineSince = 0;
      delete document.body.dataset.offline;
      renderSnapshot(snap);
      refreshCharts();
      if (!state.source) openStream();
      else if (state.source.readyState === 1) setConn("live", "live");
    } catch (e) {
      // Everything on the page stays as of the last answer, and says so.
      if (!state.offlineSince) state.offlineSince = Date.now() / 1000;
      document.body.dataset.offline = "1";
      setConn("offline", "offline since " + fmtClock(state.offlineSince) +
        (state.lastOk ? "; figures as of " + fmtClock(state.lastOk) : ""));
    } finally {
      inFlight = false;
    }
  }

  let pendingRefresh = null;
  function refreshSoon() {
    if (pendingRefresh) return;
    pendingRefresh = setTimeout(() => { pendingRefresh = null; refresh(); }, 150);
  }

  function openStream() {
    if (!window.EventSource) { setConn("polling", "polling"); return; }
    const src = new EventSource("events?since=" + state.lastSeq);
    state.source = src;
    src.onopen = () => setConn("live", "live");
    src.onerror = () => { if (!state.offlineSince) setConn("reconnecting", "reconnecting"); };
    src.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      if (!addEvent(ev)) return;
      // another cache's colour (cluster manager, one connection) is not the active tile's
      const own = processScope(ev);
      if (own && (ev.kind === "applied" || ev.kind === "detected")) {
        // show the switch at once; the snapshot that follows fills in the rest
        setStrategy($("active"), ev.to_strategy, "none");
        if (ev.kind === "applied") setStrategy($("pending"), "", "none");
      } else if (own && ev.kind === "announced") {
        setStrategy($("pending"), ev.to_strategy, "none");
      }
      renderTimeline();
      renderEvents();
      renderCounts();
      refreshSoon();
    };
  }

  // The page arrived with its state rendered; the stream resumes after the events it showed.
  state.lastSeq = Number(document.body.dataset.seq || 0);
  refresh();
  setInterval(refresh, POLL_MS);
  setInterval(() => {
    const ls = $("last-switch");
    const unix = Number(ls.dataset.unix || 0);
    if (unix) ls.textContent = "last " + fmtAgo(unix);
  }, 1000);
})();
