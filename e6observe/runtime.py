"""Process and interpreter statistics, read when a scrape or an OpenTelemetry reader asks.

Nothing here runs on a timer: :class:`RuntimeCollector` (Prometheus) and the callbacks that
:func:`register_otel` installs read psutil, ``/proc`` and :func:`gc.get_stats` at collection
time, so an idle process pays nothing and every value is as fresh as the scrape.

Names come from ``metrics.py``: Prometheus names follow prometheus_client's process and GC
collectors (``process_resident_memory_bytes``, ``python_gc_collections_total`` ...); e6observe
exports them from its own registry, so prometheus_client's ``ProcessCollector`` must not be
registered into the same registry. OpenTelemetry names follow the ``process.*`` and
``cpython.gc.*`` semantic conventions.

Unique memory (USS) is the expensive one: psutil's ``memory_full_info`` walks
``/proc/<pid>/smaps`` (about 0.75 ms here). On Linux 4.14+ the kernel's pre-summed
``/proc/self/smaps_rollup`` gives the same figure (Private_Clean + Private_Dirty +
Private_Hugetlb) in a little over half the time; psutil is the fallback elsewhere.

On Linux the other figures come from one read of ``/proc/self/stat`` and a listing of
``/proc/self/fd``, so psutil is not even imported there (it is about 0.9 MiB of RSS and 6 to
12 ms of start-up): it is imported on first use, on other systems or when ``/proc`` is missing.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional

from . import metrics as M
from ._safe import contain

_ROLLUP = "/proc/self/smaps_rollup"
_PRIVATE_KEYS = (b"Private_Clean:", b"Private_Dirty:", b"Private_Hugetlb:")
#: How long one reading serves the OpenTelemetry callbacks of the same collection.
SHARED_READING_SECONDS = 0.25
#: Longest a unique-memory (USS) figure is reused; the other figures are read on every call.
USS_MAX_AGE = 5.0
_STAT = "/proc/self/stat"
_FD_DIR = "/proc/self/fd"


def _psutil() -> Any:
    """The psutil module, imported on first use (None if it is not installed)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a declared dependency
        return None
    return psutil


def _page_and_tick() -> tuple[int, int]:
    try:
        return os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        return 0, 0


_PAGE, _TICK = _page_and_tick()


def read_proc_stat(st: ProcessStats, path: str = _STAT, fd_dir: str = _FD_DIR) -> bool:
    """Fill rss, vms, CPU times, threads and fds from Linux ``/proc``; False if unavailable."""
    if not _PAGE or not _TICK:
        return False
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    # Fields after the command name, which is in parentheses and may hold spaces or ")".
    rest = data[data.rfind(b")") + 2:].split()
    if len(rest) < 22:
        return False
    try:
        st.cpu_user = int(rest[11]) / _TICK  # field 14, utime
        st.cpu_system = int(rest[12]) / _TICK  # field 15, stime
        st.threads = int(rest[17])  # field 20, num_threads
        st.vms = int(rest[20])  # field 23, vsize (bytes)
        st.rss = int(rest[21]) * _PAGE  # field 24, rss (pages)
    except ValueError:
        return False
    with contain("runtime.fds"):
        st.fds = len(os.listdir(fd_dir))
    return True


def uss_from_smaps_rollup(path: str = _ROLLUP) -> Optional[int]:
    """Unique set size in bytes from a ``smaps_rollup`` file, or None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    total = 0
    found = False
    for line in data.splitlines():
        if line.startswith(_PRIVATE_KEYS):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                # The kernel reports these in kB.
                total += int(parts[1]) * 1024
                found = True
    return total if found else None


class ProcessStats:
    """One consistent reading of this process's resources (``None`` = not available here)."""

    __slots__ = ("rss", "vms", "uss", "cpu_user", "cpu_system", "fds", "threads")

    def __init__(self) -> None:
        self.rss: Optional[int] = None
        self.vms: Optional[int] = None
        self.uss: Optional[int] = None
        self.cpu_user: Optional[float] = None
        self.cpu_system: Optional[float] = None
        self.fds: Optional[int] = None
        self.threads: Optional[int] = None


class ProcessReader:
    """Reads :class:`ProcessStats` for the current process, following ``os.fork()``.

    ``uss_source`` picks how unique memory is read: ``"auto"`` (smaps_rollup, then psutil),
    ``"rollup"``, ``"psutil"`` or ``"off"``. Everything is read on each call except USS, the one
    costly figure (the kernel walks the page tables): it is re-read at most every
    ``uss_max_age`` seconds (0 = always). A scrape every 15 s always gets a fresh one; the
    multi-process sink, which collects once per watcher interval, pays for it every 5 s instead
    of every second.
    """

    def __init__(self, uss_source: str = "auto", rollup_path: str = _ROLLUP,
                 uss_max_age: float = USS_MAX_AGE) -> None:
        if uss_source not in ("auto", "rollup", "psutil", "off"):
            raise ValueError(f"uss_source must be auto, rollup, psutil or off, not {uss_source!r}")
        self.uss_source = uss_source
        self.rollup_path = rollup_path
        self.uss_max_age = uss_max_age
        self._uss_at: Optional[tuple[float, int, Optional[int]]] = None  # (monotonic, pid, value)
        self._pid = -1
        self._proc: Any = None
        # Whether smaps_rollup worked last time; None = not tried yet in this process.
        self._rollup_ok: Optional[bool] = None
        self._shared: Optional[tuple[float, ProcessStats]] = None
        self._shared_lock = threading.Lock()

    def _process(self) -> Any:
        pid = os.getpid()
        if self._proc is None or pid != self._pid:
            # After a fork the cached psutil.Process still names the parent.
            ps = _psutil()
            self._proc = ps.Process(pid) if ps is not None else None
            self._pid = pid
            self._rollup_ok = None
        return self._proc

    def _follow_fork(self) -> None:
        pid = os.getpid()
        if pid != self._pid:
            self._proc = None
            self._pid = pid
            self._rollup_ok = None

    def _uss(self, proc: Any) -> Optional[int]:
        if self.uss_source == "off":
            return None
        if self.uss_source in ("auto", "rollup") and self._rollup_ok is not False:
            value = uss_from_smaps_rollup(self.rollup_path)
            self._rollup_ok = value is not None
            if value is not None or self.uss_source == "rollup":
                return value
        if proc is None:
            proc = self._process()
        if proc is None:
            return None
        try:
            return int(proc.memory_full_info().uss)
        except Exception:  # psutil.Error, OSError, AttributeError: no figure
            return None

    def read(self) -> ProcessStats:
        """Read everything available now. Missing sources leave fields at None."""
        st = ProcessStats()
        self._follow_fork()
        if read_proc_stat(st):  # Linux: no psutil needed
            with contain("runtime.uss"):
                st.uss = self._uss_cached(None)
            return st
        proc = self._process()
        if proc is not None:
            with proc.oneshot():  # one /proc/<pid>/stat read for several fields
                with contain("runtime.memory"):
                    mi = proc.memory_info()
                    st.rss, st.vms = int(mi.rss), int(mi.vms)
                with contain("runtime.cpu"):
                    ct = proc.cpu_times()
                    st.cpu_user, st.cpu_system = float(ct.user), float(ct.system)
                with contain("runtime.threads"):
                    st.threads = int(proc.num_threads())
                if hasattr(proc, "num_fds"):  # POSIX only
                    with contain("runtime.fds"):
                        st.fds = int(proc.num_fds())
        with contain("runtime.uss"):
            st.uss = self._uss_cached(proc)
        return st

    def _uss_cached(self, proc: Any) -> Optional[int]:
        now, pid = time.monotonic(), os.getpid()
        last = self._uss_at
        if last is not None and last[1] == pid and now - last[0] < self.uss_max_age:
            return last[2]
        value = self._uss(proc)
        self._uss_at = (now, pid, value)
        return value

    def shared(self, max_age: float = SHARED_READING_SECONDS) -> ProcessStats:
        """A reading at most ``max_age`` seconds old, so the several OpenTelemetry callbacks of
        one collection pay for one read instead of one each."""
        now = time.monotonic()
        with self._shared_lock:
            cached = self._shared
            if cached is not None and now - cached[0] <= max_age and self._pid == os.getpid():
                return cached[1]
        st = self.read()
        with self._shared_lock:
            self._shared = (now, st)
        return st


def gc_stats() -> list[tuple[str, int, int, int]]:
    """(generation, collections, collected, uncollectable) for each GC generation."""
    if not hasattr(gc, "get_stats"):  # pragma: no cover - not CPython
        return []
    return [(str(i), int(s.get("collections", 0)), int(s.get("collected", 0)),
             int(s.get("uncollectable", 0))) for i, s in enumerate(gc.get_stats())]


class RuntimeCollector:
    """Prometheus collector: process memory, CPU, threads, fds and GC, read at scrape time."""

    def __init__(self, reader: Optional[ProcessReader] = None) -> None:
        self.reader = reader or ProcessReader()

    def describe(self) -> list[Any]:
        # Registering must not read /proc; an empty describe() makes the registry skip
        # collect() at registration (prometheus_client's documented behaviour).
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        out: list[Any] = []
        # Two parts, contained apart: a failing /proc read must not take the GC figures along.
        with contain("runtime.collect"):
            st = self.reader.read()
            for spec, value in ((M.PROCESS_RSS, st.rss), (M.PROCESS_VMS, st.vms),
                                (M.PROCESS_USS, st.uss), (M.PROCESS_FDS, st.fds),
                                (M.PROCESS_THREADS, st.threads)):
                if value is not None:
                    out.append(GaugeMetricFamily(spec.prom_name, spec.help, value=value))
            if st.cpu_user is not None and st.cpu_system is not None:
                out.append(CounterMetricFamily(M.PROCESS_CPU.prom_name, M.PROCESS_CPU.help,
                                               value=st.cpu_user + st.cpu_system))
        with contain("runtime.collect"):
            fams = {spec.prom_name: CounterMetricFamily(spec.prom_name, spec.help,
                                                        labels=list(spec.labels))
                    for spec in (M.GC_COLLECTIONS, M.GC_COLLECTED, M.GC_UNCOLLECTABLE)}
            for gen, collections, collected, uncollectable in gc_stats():
                fams[M.GC_COLLECTIONS.prom_name].add_metric([gen], collections)
                fams[M.GC_COLLECTED.prom_name].add_metric([gen], collected)
                fams[M.GC_UNCOLLECTABLE.prom_name].add_metric([gen], uncollectable)
            out.extend(fams.values())
        return iter(out)


# --- OpenTelemetry -----------------------------------------------------------------------------

#: Instrument factory per semantic convention: counts and sizes are up-down counters, totals
#: are counters, timestamps/ages are gauges.
OTEL_KIND = {"counter": "create_observable_counter", "gauge": "create_observable_gauge",
             "updown": "create_observable_up_down_counter"}


def otel_observable(meter: Any, spec: M.MetricSpec, kind: str,
                    callback: Callable[[], Iterable[tuple[float, dict[str, Any]]]],
                    component: str, enabled: Callable[[], bool] = lambda: True) -> Any:
    """Create one observable instrument for ``spec`` whose callback is contained.

    ``callback()`` returns ``(value, attributes)`` pairs. ``enabled()`` false makes the callback
    report nothing: OpenTelemetry has no way to remove an instrument, so a stopped component
    silences its callbacks instead.
    """
    from opentelemetry.metrics import Observation

    def _cb(options: Any) -> list[Any]:
        if not enabled():
            return []
        obs: list[Any] = []
        with contain(component):
            obs = [Observation(v, attrs) for v, attrs in callback()]
        return obs

    factory = getattr(meter, OTEL_KIND[kind])
    return factory(spec.otel_name, callbacks=[_cb], unit=spec.unit, description=spec.help)


def register_otel(meter: Any, reader: Optional[ProcessReader] = None,
                  enabled: Callable[[], bool] = lambda: True) -> list[Any]:
    """Register ``process.*`` and ``cpython.gc.*`` observable instruments on ``meter``.

    The callbacks of one collection share one reading (see :meth:`ProcessReader.shared`), taken
    when the meter's reader collects. Returns the instruments.
    """
    rd = reader or ProcessReader()

    def one(field: str) -> Callable[[], list[tuple[float, dict[str, Any]]]]:
        def cb() -> list[tuple[float, dict[str, Any]]]:
            value = getattr(rd.shared(), field)
            return [] if value is None else [(value, {})]
        return cb

    def cpu() -> list[tuple[float, dict[str, Any]]]:
        st = rd.shared()
        if st.cpu_user is None or st.cpu_system is None:
            return []
        return [(st.cpu_user, {"cpu.mode": "user"}), (st.cpu_system, {"cpu.mode": "system"})]

    def gc_field(index: int) -> Callable[[], list[tuple[float, dict[str, Any]]]]:
        def cb() -> list[tuple[float, dict[str, Any]]]:
            return [(float(row[index]), {"cpython.gc.generation": int(row[0])})
                    for row in gc_stats()]
        return cb

    c = "runtime.otel"
    return [
        otel_observable(meter, M.PROCESS_RSS, "updown", one("rss"), c, enabled),
        otel_observable(meter, M.PROCESS_VMS, "updown", one("vms"), c, enabled),
        otel_observable(meter, M.PROCESS_USS, "updown", one("uss"), c, enabled),
        otel_observable(meter, M.PROCESS_FDS, "updown", one("fds"), c, enabled),
        otel_observable(meter, M.PROCESS_THREADS, "updown", one("threads"), c, enabled),
        otel_observable(meter, M.PROCESS_CPU, "counter", cpu, c, enabled),
        otel_observable(meter, M.GC_COLLECTIONS, "counter", gc_field(1), c, enabled),
        otel_observable(meter, M.GC_COLLECTED, "counter", gc_field(2), c, enabled),
        otel_observable(meter, M.GC_UNCOLLECTABLE, "counter", gc_field(3), c, enabled),
    ]


__all__ = ["RuntimeCollector", "ProcessReader", "ProcessStats", "register_otel", "gc_stats",
           "uss_from_smaps_rollup", "otel_observable"]
