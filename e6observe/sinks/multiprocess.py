"""Multi-process Prometheus: every worker's switches, mismatches and latencies in one scrape.

prometheus_client's own multiprocess mode only aggregates its own metric objects and forbids
custom collectors, and e6observe's metrics are computed from the recorder at scrape time — so
e6observe brings its own, small, file-based scheme (the same idea: one file per process, merged
by whoever serves /metrics).

**Writing.** Each process owns ``<dir>/e6observe-<pid>-<nonce>.json`` (its recorder's counters,
histogram buckets and blue/green state, plus the samples of its per-process collectors: runtime
memory, watcher heartbeat, pools) and holds an exclusive ``flock`` on
``<dir>/e6observe-<pid>-<nonce>.lock`` for as long as it lives. The JSON is replaced atomically
(temp file + ``os.replace``) right after every switch-related event (``recorder.subscribe``),
rate-limited for event storms, on :meth:`ProcessStateWriter.flush` (the watcher calls it once
per interval; it also re-reads the per-process collectors), and at exit. Unchanged state is not
rewritten.

**Merging** (:class:`MultiProcessCollector`, at scrape time). A file whose lock can be taken
belongs to a dead process (the kernel drops ``flock`` locks when a process dies, even by
SIGKILL, and the nonce makes a reused pid harmless). Counters and histograms are summed over
all files; blue/green gauges (active, pending, in flight) and per-process collector samples
(memory, heartbeat) are shown per *live* process with a ``pid`` label; the last-switch
timestamp is the latest of any process. Files of dead processes are folded into
``<dir>/e6observe-dead.json`` and deleted, so their counts keep counting (as in
prometheus_client's multiprocess mode) while the directory stays at one file per live process —
bounded however many workers come and go. Parsed files are cached by (inode, mtime, size), so
an unchanged worker costs a ``stat`` per scrape.

As with prometheus_client, empty the directory when the whole application is redeployed:
counts of earlier runs would otherwise carry over.

**Files other users or a full disk cannot corrupt.** Every file is written to a fresh temp file
(``tempfile.mkstemp`` in the directory: an unpredictable name, ``O_EXCL``, never through a
symlink), written completely (short writes continued, the size checked), then renamed over the
old one; a write that fails leaves the previous file whole, is counted, and is retried at the next
flush. Files are opened for reading with ``O_NOFOLLOW`` and only when they are regular files of
bounded size. A file that does not parse keeps its process's last good state (the error is
counted), so a merged counter never goes backwards while its process lives. A directory that
other users can write to is refused unless it is sticky and ours (:func:`check_directory`); a
refused, read-only or otherwise unusable directory raises :class:`UnusableDirectory`, and the
Prometheus sink falls back to this process's own metrics with one warning saying why.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import secrets
import stat
import sys
import threading
import time
import weakref
from typing import Any, Optional

from .. import metrics as M
from .._files import write_atomic
from .._safe import contain, internal_errors, record_internal_error
from .scrape import (
    COUNTERS,
    HISTOGRAMS,
    ProcessState,
    View,
    describe_families,
    render,
    view_of,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: liveness falls back to the pid
    fcntl = None  # type: ignore[assignment]

PREFIX = "e6observe-"
DEAD_FILE = "e6observe-dead.json"
DIR_LOCK = "e6observe.lock"
FORMAT = 1
#: Ids of merged dead processes remembered (so a crash between merge and delete cannot count a
#: file twice). Bounded.
MERGED_IDS_CAP = 4096
#: Event kinds written immediately; others (mismatch, retry storms) at most every MIN_INTERVAL.
URGENT_KINDS = frozenset({"detected", "announced", "applied", "cache_cleared"})
MIN_INTERVAL = 0.05
#: Bounds on what per-process collectors may put into a state file.
MAX_PROCESS_FAMILIES = 64
MAX_SAMPLES_PER_FAMILY = 512
_SAMPLE_TYPES = frozenset({"gauge", "counter", "histogram", "unknown"})
#: Seconds a scrape waits for another process's compaction before merging read-only.
DIR_LOCK_WAIT = 2.0
#: Largest state file read (a process's file is a few kB; a bigger one is not ours).
MAX_STATE_BYTES = 16 * 1024 * 1024
#: Temp files: never matched as state files; left-overs of a crash are removed after TMP_MAX_AGE s.
TMP_PREFIX = ".e6observe-tmp-"
TMP_MAX_AGE = 60.0
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnusableDirectory(OSError):
    """The multi-process directory cannot be used; the message says why and what to do."""


def report_unusable(exc: UnusableDirectory) -> None:
    """One warning for a directory multi-process mode cannot use, and one count (without the
    generic "contained a ..." line)."""
    from .. import _safe

    _safe.logger.warning(
        "e6observe: %s. Multi-process mode is off: /metrics serves this process's metrics only",
        exc.strerror or exc,
    )
    record_internal_error("sink.multiprocess", exc, reported=True)


def check_directory(path: str) -> None:
    """Raise :class:`UnusableDirectory` unless ``path`` is a directory this process can write and
    no other user can: not writable by group or others, unless it is sticky and owned by us
    (then others cannot rename or delete our files)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UnusableDirectory(
            exc.errno, f"multi-process directory {path!r}: {exc.strerror or type(exc).__name__}"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnusableDirectory(errno.ENOTDIR, f"multi-process directory {path!r} is not a directory")
    euid = os.geteuid() if hasattr(os, "geteuid") else st.st_uid
    shared = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if shared and not (st.st_mode & stat.S_ISVTX and st.st_uid == euid):
        raise UnusableDirectory(
            errno.EPERM,
            f"multi-process directory {path!r} can be written by other users "
            f"(mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}): they could plant or "
            f"replace state files. Use a directory only uid {euid} can write to (chmod go-w), "
            f"or one that is sticky (chmod +t) and owned by uid {euid}",
        )
    if not os.access(path, os.W_OK | os.X_OK):
        ro = False
        if hasattr(os, "statvfs"):
            try:
                ro = bool(os.statvfs(path).f_flag & getattr(os, "ST_RDONLY", 1))
            except OSError:
                pass
        why = (
            "is on a read-only file system"
            if ro
            else f"is not writable by this process (uid {euid}; owner uid {st.st_uid}, "
            f"mode {stat.S_IMODE(st.st_mode):04o})"
        )
        raise UnusableDirectory(
            errno.EROFS if ro else errno.EACCES, f"multi-process directory {path!r} {why}"
        )


_COUNTER_NAMES = {s.prom_name: len(s.labels) for s in COUNTERS}
_HIST_NAMES = {s.prom_name: (len(s.labels), len(s.buckets) + 1) for s in HISTOGRAMS}
#: Per-process families a state file may carry: the table's per-process readings (watcher,
#: cluster, pool, runtime), never a family the merge renders itself.
_PROCESS_NAMES = frozenset(m.prom_name for m in M.ALL if m.source in M.READING_SOURCES)


# -- one process's state as a JSON document --------------------------------------------------
def raw_state(recorder: Any) -> dict[str, Any]:
    """The recorder's cumulative counts as plain data (no baseline applied)."""
    v = view_of(recorder)  # contained per family, like a single-process scrape
    counters = {n: [list(k) + [x] for k, x in rows.items()] for n, rows in v.counters.items()}
    hists = {n: [[list(k), c, t] for k, (c, t) in rows.items()] for n, rows in v.histograms.items()}
    exemplars = {
        n: [[list(k), i] + list(e) for k, per in rows.items() for i, e in per.items()]
        for n, rows in v.exemplars.items()
    }
    return {"c": counters, "h": hists, "x": exemplars, "e": dict(internal_errors())}


def collect_process_samples(collectors: list[Any]) -> list[list[Any]]:
    """Samples of per-process collectors as ``[name, type, help, [[sample, labels, value]]]``.

    Bounded: table names only (not the sink's own), at most MAX_PROCESS_FAMILIES families of
    MAX_SAMPLES_PER_FAMILY samples; exemplars and timestamps are dropped.
    """
    out: list[list[Any]] = []
    for c in collectors:
        with contain("sink.multiprocess"):
            for fam in c.collect():
                if fam.name not in _PROCESS_NAMES or fam.type not in _SAMPLE_TYPES:
                    continue
                samples = [
                    [s.name, dict(s.labels), float(s.value)] for s in fam.samples[:MAX_SAMPLES_PER_FAMILY]
                ]
                out.append([fam.name, fam.type, fam.documentation, samples])
                if len(out) >= MAX_PROCESS_FAMILIES:
                    return out
    return out


def _counts_anything(state: dict[str, Any]) -> bool:
    """True if a :func:`raw_state` document has a count above zero (a baseline worth applying)."""
    return (
        any(r[-1] for rows in state["c"].values() for r in rows)
        or any(r[2] or any(r[1]) for rows in state["h"].values() for r in rows)
        or any(state["e"].values())
    )


def _minus(state: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``state - base`` per series, clamped at 0: a forked child's own counts only."""
    bc = {(n, tuple(r[:-1])): r[-1] for n, rows in base["c"].items() for r in rows}
    bh = {(n, tuple(r[0])): r for n, rows in base["h"].items() for r in rows}
    counters = {
        n: [r[:-1] + [max(0.0, r[-1] - bc.get((n, tuple(r[:-1])), 0.0))] for r in rows]
        for n, rows in state["c"].items()
    }
    hists: dict[str, list[list[Any]]] = {}
    for n, rows in state["h"].items():
        out = hists[n] = []
        for labels, counts, total in rows:
            b = bh.get((n, tuple(labels)))
            if b is not None and len(b[1]) == len(counts):
                counts = [max(0, x - y) for x, y in zip(counts, b[1])]
                total = max(0.0, total - b[2])
            out.append([labels, counts, total])
    errors = {k: max(0, v - base["e"].get(k, 0)) for k, v in state["e"].items()}
    return {"c": counters, "h": hists, "x": state["x"], "e": errors}


def _write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once, or leave it as it was and raise ``OSError``
    (:func:`e6observe._files.write_atomic`, temp files named ``TMP_PREFIX...``)."""
    write_atomic(path, data, TMP_PREFIX)


# -- the writer (every process) --------------------------------------------------------------
_WRITERS: weakref.WeakSet[ProcessStateWriter] = weakref.WeakSet()
_exit_hook_installed = False


def _write_all_at_exit() -> None:
    pid = os.getpid()
    for w in list(_WRITERS):
        if w.pid == pid:
            with contain("sink.multiprocess"):
                w.write()


def _install_exit_hooks() -> None:
    global _exit_hook_installed
    if not _exit_hook_installed:
        atexit.register(_write_all_at_exit)
        _exit_hook_installed = True
    # multiprocessing children leave through os._exit (no atexit); its own exit finalizers do
    # run there. Registered per process: a forked child starts with an empty finalizer list.
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.Finalize(None, _write_all_at_exit, exitpriority=10)


class ProcessStateWriter:
    """Publishes this process's recorder state into the multi-process directory."""

    def __init__(self, directory: str, recorder: Any) -> None:
        """Raises :class:`UnusableDirectory` when ``directory`` cannot be used (see
        :func:`check_directory`; also when the first state file cannot be written)."""
        self.directory = os.path.abspath(directory)
        if not os.path.isdir(self.directory):
            try:
                os.makedirs(self.directory, mode=0o755, exist_ok=True)
            except OSError as exc:
                raise UnusableDirectory(
                    exc.errno, f"multi-process directory {directory!r} cannot be created: {exc.strerror}"
                ) from None
        check_directory(self.directory)
        self.recorder = recorder
        self._lock = threading.Lock()
        self._baseline: Optional[dict[str, Any]] = None
        self._last_body: Optional[str] = None
        self._last_write = 0.0
        self._collectors: list[Any] = []
        #: The per-process collectors' samples as of the last flush.
        self.process_samples: list[list[Any]] = []
        self._dirty = False
        self.closed = False
        self.writes = 0
        self._lock_fd: Optional[int] = None
        #: State writes that failed (disk full, ...); the previous file stayed whole.
        self.failed_writes = 0
        try:
            self._new_identity()
            self.write(raise_errors=True)
        except OSError as exc:
            self._drop_identity()
            raise UnusableDirectory(
                exc.errno,
                f"multi-process directory {directory!r}: cannot write a state file: {exc.strerror or exc}",
            ) from None
        recorder.subscribe(self._on_event)
        _WRITERS.add(self)
        _install_exit_hooks()

    def _drop_identity(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)
        for p in (
            getattr(self, "path", None),
            os.path.join(self.directory, f"{PREFIX}{getattr(self, 'id', '')}.lock"),
        ):
            if p and getattr(self, "id", None):
                try:
                    os.unlink(p)
                except OSError:
                    pass

    # -- identity -----------------------------------------------------------------------------
    def _new_identity(self) -> None:
        self.pid = os.getpid()
        self.id = f"{self.pid}-{secrets.token_hex(4)}"
        self.path = os.path.join(self.directory, f"{PREFIX}{self.id}.json")
        lock_path = os.path.join(self.directory, f"{PREFIX}{self.id}.lock")
        # O_EXCL | O_NOFOLLOW: a file (or symlink) someone planted under our name is an error.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a fresh unique file: never contended
        self._lock_fd = fd

    def after_fork_in_child(self) -> None:
        """In a forked child: own files, counts from here on only, a dispatcher that runs."""
        fd = self._lock_fd
        if fd is not None:
            # Closing our copy leaves the parent's lock in place (flock locks belong to the
            # shared open file description; no LOCK_UN here).
            try:
                os.close(fd)
            except OSError:
                pass
        self._lock = threading.Lock()
        self._last_body = None
        self._new_identity()
        # Whatever the parent had counted is the parent's to report. A recorder reset for this
        # child (the fork registry resets stores before sinks) counts nothing yet: no baseline.
        base = raw_state(self.recorder)
        self._baseline = base if _counts_anything(base) else None
        _install_exit_hooks()
        self._resubscribe(self.recorder)
        self.write()

    def set_recorder(self, recorder: Any) -> None:
        """Publish ``recorder`` from now on (a fresh recorder starts at zero: no baseline)."""
        old = self.recorder
        with contain("sink.multiprocess"):
            old.unsubscribe(self._on_event)
        self.recorder = recorder
        self._baseline = None
        self._resubscribe(recorder)
        self.write()

    def _resubscribe(self, recorder: Any) -> None:
        # subscribe() (re)starts the recorder's dispatcher thread, which a fork leaves dead.
        with contain("sink.multiprocess"):
            recorder.unsubscribe(self._on_event)
            recorder.subscribe(self._on_event)

    def add_process_collector(self, collector: Any) -> None:
        """Carry ``collector``'s samples (read at each flush) in this process's file."""
        if collector not in self._collectors:
            self._collectors.append(collector)
        self.flush()

    # -- publishing ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """This process's state as written to its file (baseline applied)."""
        doc = raw_state(self.recorder)
        if self._baseline is not None:
            doc = _minus(doc, self._baseline)
        st = self.recorder.state()
        doc["v"] = FORMAT
        doc["id"] = self.id
        doc["pid"] = self.pid
        doc["s"] = {
            "active": st.get("active"),
            "pending": st.get("pending"),
            "last_switch_time": st.get("last_switch_time") or 0.0,
            "in_flight": st.get("in_flight") or {},
        }
        doc["m"] = self.process_samples
        return doc

    def _on_event(self, ev: Any) -> None:
        if self.closed:
            return
        if ev.kind in URGENT_KINDS or time.monotonic() - self._last_write >= MIN_INTERVAL:
            self.write()
        else:
            self._dirty = True

    def write(self, raise_errors: bool = False) -> bool:
        """Write the state file now if it changed since the last write. True if written.

        A failed write (disk full, ...) leaves the previous file whole, is counted (and raised
        only with ``raise_errors``), and is retried by the next event or flush."""
        if self.closed or os.getpid() != self.pid:
            return False
        with self._lock:
            body = json.dumps(self.snapshot(), separators=(",", ":"), sort_keys=True)
            if body == self._last_body:
                self._dirty = False
                return False
            try:
                _write_atomic(self.path, body.encode())
            except OSError as exc:
                self.failed_writes += 1
                self._dirty = True
                if raise_errors:
                    raise
                record_internal_error("sink.multiprocess", exc)
                return False
            self._last_body = body
            self._last_write = time.monotonic()
            self._dirty = False
            self.writes += 1
            return True

    def flush(self) -> None:
        """Once per watcher interval: re-read the per-process collectors, publish changes."""
        with contain("sink.multiprocess"):
            if self._collectors and not self.closed:
                self.process_samples = collect_process_samples(self._collectors)
            self.write()

    def close(self) -> None:
        """Final write, then release the lock: later scrapes fold the file into the dead total."""
        if self.closed:
            return
        with contain("sink.multiprocess"):
            self.recorder.unsubscribe(self._on_event)
        with contain("sink.multiprocess"):
            self.write()
        self.closed = True
        _WRITERS.discard(self)
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None and os.getpid() == self.pid:
            os.close(fd)


# -- the merger (whoever serves /metrics) ----------------------------------------------------
def _read_state(path: str, st: os.stat_result) -> dict[str, Any]:
    """Parse a state file: a regular file (no symlink, no FIFO) of at most MAX_STATE_BYTES."""
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file")
    if st.st_size > MAX_STATE_BYTES:
        raise ValueError(f"state file over {MAX_STATE_BYTES} bytes")
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise ValueError(f"state file over {MAX_STATE_BYTES} bytes")
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("v") != FORMAT:
        raise ValueError("not an e6observe state file")
    return doc


def _valid_labels(labels: Any, n: int) -> bool:
    return (
        isinstance(labels, list)
        and len(labels) == n
        and all(isinstance(x, str) and len(x) <= 64 for x in labels)
    )


def _add(v: View, doc: dict[str, Any]) -> None:
    """Add one document's counters, histograms and errors into the View (validated)."""
    for name, rows in (doc.get("c") or {}).items():
        n = _COUNTER_NAMES.get(name)
        if n is None:
            continue
        dst = v.counters[name]
        for r in rows:
            if _valid_labels(r[:-1], n) and isinstance(r[-1], (int, float)):
                key = tuple(r[:-1])
                dst[key] = dst.get(key, 0.0) + r[-1]
    for name, rows in (doc.get("h") or {}).items():
        shape = _HIST_NAMES.get(name)
        if shape is None:
            continue
        dst_h = v.histograms[name]
        for labels, counts, total in rows:
            if not _valid_labels(labels, shape[0]) or len(counts) != shape[1]:
                continue  # another bucket layout (an older e6observe): not summable
            key = tuple(labels)
            cur = dst_h.get(key)
            if cur is None:
                dst_h[key] = [list(counts), float(total)]
            else:
                cur[0] = [a + b for a, b in zip(cur[0], counts)]
                cur[1] += total
    for name, rows in (doc.get("x") or {}).items():
        shape = _HIST_NAMES.get(name)
        if shape is None:
            continue
        per = v.exemplars.setdefault(name, {})
        for labels, idx, trace, span, value, t in rows:
            if not _valid_labels(labels, shape[0]) or not 0 <= idx < shape[1]:
                continue
            slot = per.setdefault(tuple(labels), {})
            old = slot.get(idx)
            if old is None or t > old[3]:  # the most recent exemplar of any process wins
                slot[idx] = (str(trace)[:32], str(span)[:16], float(value), float(t))
    for comp, n in (doc.get("e") or {}).items():
        if isinstance(comp, str) and len(comp) <= 64:
            v.internal_errors[comp] = v.internal_errors.get(comp, 0.0) + n
    st = doc.get("s") or {}
    v.last_switch_time = max(
        v.last_switch_time,
        float(st.get("last_switch_time") or 0.0),
        float(doc.get("last_switch_time") or 0.0),
    )


def _strategy(value: Any) -> Optional[str]:
    return value if value in M.STRATEGY_LABELS else None


def _process(doc: dict[str, Any]) -> ProcessState:
    st = doc.get("s") or {}
    in_flight = {
        k: int(n)
        for k, n in (st.get("in_flight") or {}).items()
        if k in M.STRATEGY_LABELS and isinstance(n, (int, float))
    }
    return ProcessState(
        int(doc.get("pid", 0)), _strategy(st.get("active")), _strategy(st.get("pending")), in_flight
    )


def _add_families(v: View, doc: dict[str, Any]) -> None:
    """A live process's per-process collector samples, kept apart by its pid."""
    pid = int(doc.get("pid", 0))
    for name, typ, help_text, samples in (doc.get("m") or [])[:MAX_PROCESS_FAMILIES]:
        if name not in _PROCESS_NAMES or typ not in _SAMPLE_TYPES:
            continue
        fam = v.families.get(name)
        if fam is None:
            fam = v.families[name] = (typ, str(help_text)[:512], [])
        elif fam[0] != typ:
            continue  # two versions disagreeing on a type: keep the first
        rows = fam[2]
        for sname, labels, value in samples[:MAX_SAMPLES_PER_FAMILY]:
            if (
                isinstance(sname, str)
                and sname.startswith(name)
                and isinstance(labels, dict)
                and len(labels) <= 8
                and "pid" not in labels
                and all(
                    isinstance(k, str) and isinstance(x, str) and len(x) <= 128 for k, x in labels.items()
                )
            ):
                rows.append((pid, sname, labels, float(value)))


def _merge_into(agg: dict[str, Any], doc: dict[str, Any]) -> None:
    """Fold a dead process's document into the dead-total document."""
    v = View(per_pid=True)
    _add(v, agg)
    _add(v, doc)
    agg["c"] = {n: [list(k) + [x] for k, x in rows.items()] for n, rows in v.counters.items()}
    agg["h"] = {n: [[list(k), c, s] for k, (c, s) in rows.items()] for n, rows in v.histograms.items()}
    agg["e"] = v.internal_errors
    agg["last_switch_time"] = v.last_switch_time
    agg.pop("x", None)  # exemplars of dead processes point at finished traces: not kept


class MultiProcessCollector:
    """prometheus_client collector merging every process's state file at scrape time."""

    def __init__(self, directory: str, own: Optional[ProcessStateWriter] = None) -> None:
        self.directory = os.path.abspath(directory)
        self.own = own
        self._cache: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.compacted = 0

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._cache.clear()

    def describe(self) -> list[Any]:
        return describe_families(per_pid=True)

    def collect(self) -> list[Any]:
        # Scrapes of this process are serialised: compaction must not run twice at once.
        with self._lock:
            try:
                v = self.view()
            except Exception as exc:
                record_internal_error("sink.multiprocess", exc)
                v = View(per_pid=True)
        return render(v, "sink.multiprocess")

    # -- reading ------------------------------------------------------------------------------
    def _load(self, path: str) -> Optional[dict[str, Any]]:
        """The parsed state file at ``path`` (cached by inode, mtime, size), or None if gone.

        A file that cannot be parsed (or is not a regular file of ours) raises when nothing was
        read from it before; otherwise its last good state is returned and the error counted,
        so that what it contributes never goes backwards."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._cache.pop(path, None)
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = self._cache.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            doc = _read_state(path, st)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            if hit is None:
                raise
            record_internal_error("sink.multiprocess", exc)
            return hit[1]
        self._cache[path] = (key, doc)
        return doc

    def _probe(self, wid: str) -> tuple[bool, Optional[int]]:
        """(alive, fd holding the dead process's lock). The nonce in ``wid`` defeats pid reuse."""
        lock_path = os.path.join(self.directory, f"{PREFIX}{wid}.lock")
        if fcntl is None:  # pragma: no cover - no flock: fall back to the pid alone
            import psutil

            return psutil.pid_exists(int(wid.split("-", 1)[0])), None
        try:
            fd = os.open(lock_path, os.O_RDWR | _NOFOLLOW | _CLOEXEC)
        except FileNotFoundError:
            return False, None
        except OSError:  # a symlink or something else planted there: not a live process of ours
            return False, None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return True, None
        return False, fd

    def _dir_lock(self) -> Optional[int]:
        if fcntl is None:  # pragma: no cover
            return None
        try:
            fd = os.open(
                os.path.join(self.directory, DIR_LOCK), os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644
            )
        except OSError:  # read-only directory, or a symlink planted there: merge read-only
            return None
        deadline = time.monotonic() + DIR_LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except OSError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    return None
                time.sleep(0.01)

    def view(self) -> View:
        """The merged View: summed counts of every process, live gauges of the live ones."""
        v = View(per_pid=True)
        own = self.own if self.own is not None and not self.own.closed else None
        dir_fd = self._dir_lock()  # held for the whole merge: concurrent scrapers serialise
        try:
            dead: list[tuple[str, str, Optional[int]]] = []
            seen: set[str] = set()
            for name in sorted(os.listdir(self.directory)):
                if not (name.startswith(PREFIX) and name.endswith(".json")) or name == DEAD_FILE:
                    continue
                wid = name[len(PREFIX) : -5]
                if own is not None and wid == own.id:
                    continue
                path = os.path.join(self.directory, name)
                seen.add(path)
                alive, fd = self._probe(wid)
                if not alive:
                    dead.append((wid, path, fd))
                    continue
                with contain("sink.multiprocess"):
                    doc = self._load(path)
                    if doc is not None:
                        _add(v, doc)
                        v.processes.append(_process(doc))
                        _add_families(v, doc)
            if dead:
                self._fold_dead(v, dead, compact=dir_fd is not None)
            agg_path = os.path.join(self.directory, DEAD_FILE)
            seen.add(agg_path)
            with contain("sink.multiprocess"):
                agg = self._load(agg_path)
                if agg is not None:
                    _add(v, agg)
            for path in list(self._cache):
                if path not in seen:
                    del self._cache[path]  # bounded: only files that still exist
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
        if own is not None:
            with contain("sink.multiprocess"):
                doc = own.snapshot()
                _add(v, doc)
                v.processes.append(_process(doc))
                # The serving process reads its own collectors now rather than a flush ago.
                doc["m"] = collect_process_samples(own._collectors)
                _add_families(v, doc)
        v.processes.sort(key=lambda p: p.pid or 0)
        return v

    def _remove_stale_temp_files(self) -> None:
        """Temp files a process left when it died mid-write (under the directory lock)."""
        now = time.time()
        for name in os.listdir(self.directory):
            if name.startswith(TMP_PREFIX):
                p = os.path.join(self.directory, name)
                with contain("sink.multiprocess"):
                    try:
                        if now - os.lstat(p).st_mtime > TMP_MAX_AGE:
                            os.unlink(p)
                    except FileNotFoundError:
                        pass

    def _fold_dead(self, v: View, dead: list[tuple[str, str, Optional[int]]], compact: bool) -> None:
        """Fold dead processes' files into the dead total (or, failing that, into this view)."""
        agg_path = os.path.join(self.directory, DEAD_FILE)
        try:
            if not compact:
                raise RuntimeError("directory lock busy")
            agg = self._load(agg_path)
            agg = dict(agg) if agg is not None else {"v": FORMAT, "merged": []}
            merged: list[str] = list(agg.get("merged") or [])
            known = set(merged)
            done: list[tuple[str, str, Optional[int]]] = []
            for wid, path, fd in dead:
                doc = None
                with contain("sink.multiprocess"):
                    doc = self._load(path)
                if wid not in known and doc is not None:
                    _merge_into(agg, doc)
                    merged.append(wid)
                    known.add(wid)
                done.append((wid, path, fd))
            self._remove_stale_temp_files()
            agg["merged"] = merged[-MERGED_IDS_CAP:]
            agg["v"] = FORMAT
            _write_atomic(agg_path, json.dumps(agg, separators=(",", ":")).encode())
            for wid, path, _fd in done:
                for p in (path, os.path.join(self.directory, f"{PREFIX}{wid}.lock")):
                    try:
                        os.unlink(p)
                    except FileNotFoundError:
                        pass
                self._cache.pop(path, None)
                self.compacted += 1
        except Exception as exc:
            if not isinstance(exc, RuntimeError):
                record_internal_error("sink.multiprocess", exc)
            # Could not compact (read-only dir, lock busy): the dead counts still count.
            for _wid, path, _fd in dead:
                with contain("sink.multiprocess"):
                    doc = self._load(path)
                    if doc is not None:
                        _add(v, doc)
        finally:
            for _wid, _path, fd in dead:
                if fd is not None:
                    os.close(fd)


__all__ = [
    "ProcessStateWriter",
    "MultiProcessCollector",
    "raw_state",
    "DEAD_FILE",
    "UnusableDirectory",
    "check_directory",
]
