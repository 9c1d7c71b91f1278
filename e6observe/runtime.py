"""Process and interpreter statistics, read when a scrape or an OpenTelemetry reader asks.

Nothing here runs on a timer: :class:`RuntimeCollector` (Prometheus) and the callbacks that
:func:`register_otel` installs read psutil, ``/proc`` and :func:`gc.get_stats` at collection
time, so an idle process pays nothing and every value is as fresh as the scrape.

On Prometheus, prometheus_client's own process, platform and GC collectors serve their
families; :class:`RuntimeCollector` runs them and adds USS and threads (see there).
OpenTelemetry names follow the ``process.*`` and ``cpython.gc.*`` semantic conventions, and
USS, which has none, is ``e6observe.process.memory.unique``. OpenTelemetry's
system-metrics instrumentation exports the same ``process.*`` figures: with
``runtime_metrics="auto"`` (the default) e6observe's are silent while it is active.

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
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

from . import metrics as M
from ._safe import contain
from .readings import SHARED_READING_SECONDS, otel_observable

_ROLLUP = "/proc/self/smaps_rollup"
_PRIVATE_KEYS = (b"Private_Clean:", b"Private_Dirty:", b"Private_Hugetlb:")
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
    rest = data[data.rfind(b")") + 2 :].split()
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

    def __init__(
        self, uss_source: str = "auto", rollup_path: str = _ROLLUP, uss_max_age: float = USS_MAX_AGE
    ) -> None:
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
    return [
        (str(i), int(s.get("collections", 0)), int(s.get("collected", 0)), int(s.get("uncollectable", 0)))
        for i, s in enumerate(gc.get_stats())
    ]


#: prometheus_client's collectors whose families e6observe's registry exports as they are.
_STANDARD = ("ProcessCollector", "PlatformCollector", "GCCollector")


def _standard_collectors() -> list[Any]:
    """prometheus_client's process, platform and GC collectors, registered nowhere."""
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

    out: list[Any] = [ProcessCollector(registry=None), PlatformCollector(registry=None)]
    if hasattr(gc, "get_stats"):
        # GCCollector insists on registering itself: into a registry that is then dropped.
        out.append(GCCollector(registry=CollectorRegistry()))
    return out


class RuntimeCollector:
    """Prometheus collector: the process and interpreter, read at scrape time.

    prometheus_client's own ``ProcessCollector`` (memory, CPU, fds, max fds, start time),
    ``PlatformCollector`` (``python_info``) and ``GCCollector`` serve their families, under
    their names and help texts, so e6observe's registry looks like any instrumented Python
    process; e6observe adds what they lack: unique memory (USS) and the OS thread count - and,
    where ``ProcessCollector`` reads nothing (no ``/proc``), memory, CPU and fds from psutil.

    :meth:`describe` names every family without reading anything, so a collector of the same
    name registered later into the same registry fails at registration. A prometheus_client
    process/platform/GC collector registered into :attr:`registry` (they describe nothing, so
    the registry cannot refuse them) is left to serve its families: this collector then leaves
    them out of its own output instead of doubling them.
    """

    def __init__(self, reader: Optional[ProcessReader] = None, registry: Any = None) -> None:
        self.reader = reader or ProcessReader()
        #: The registry this collector is exported from (set by the Prometheus sink).
        self.registry = registry
        self._standard = _standard_collectors()

    def describe(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        out: list[Any] = []
        for spec in M.of("runtime"):
            cls = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
            out.append(cls(spec.prom_name, spec.help))
        return out

    def _others(self) -> set[str]:
        """Names of the standard collectors some other collector of the registry runs."""
        reg = self.registry
        if reg is None:
            return set()
        try:
            mine = {id(c) for c in self._standard}
            return {
                type(c).__name__
                for c in list(getattr(reg, "_collector_to_names", {}))
                if type(c).__name__ in _STANDARD and id(c) not in mine
            }
        except Exception:
            return set()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        out: list[Any] = []
        others = self._others()
        served: set[str] = set()
        for std in self._standard:
            with contain("runtime.collect"):
                fams = list(std.collect())
                served.update(f.name for f in fams)
                if type(std).__name__ not in others:
                    out.extend(fams)
        # Two parts, contained apart: a failing /proc read must not take the GC figures along.
        with contain("runtime.collect"):
            st = self.reader.read()
            for spec, value in (
                (M.PROCESS_RSS, st.rss),
                (M.PROCESS_VMS, st.vms),
                (M.PROCESS_USS, st.uss),
                (M.PROCESS_FDS, st.fds),
                (M.PROCESS_THREADS, st.threads),
            ):
                if (
                    value is not None
                    and spec.prom_name not in served
                    and (spec in (M.PROCESS_USS, M.PROCESS_THREADS) or "ProcessCollector" not in others)
                ):
                    out.append(GaugeMetricFamily(spec.prom_name, spec.help, value=value))
            if (
                st.cpu_user is not None
                and st.cpu_system is not None
                and M.PROCESS_CPU.prom_name not in served
                and "ProcessCollector" not in others
            ):
                out.append(
                    CounterMetricFamily(
                        M.PROCESS_CPU.prom_name, M.PROCESS_CPU.help, value=st.cpu_user + st.cpu_system
                    )
                )
        return iter(out)


# --- OpenTelemetry -----------------------------------------------------------------------------

_SYSTEM_METRICS = "opentelemetry.instrumentation.system_metrics"


def system_metrics_active() -> bool:
    """True while OpenTelemetry's system-metrics instrumentation is instrumented in this
    process (it exports the same ``process.*`` figures). Never imports it."""
    mod = sys.modules.get(_SYSTEM_METRICS)
    cls = getattr(mod, "SystemMetricsInstrumentor", None)
    if cls is None:
        return False
    try:
        # BaseInstrumentor is a singleton: this is the instance opentelemetry-instrument used.
        return bool(cls()._is_instrumented_by_opentelemetry)
    except Exception:
        return False


def runtime_enabled(enabled: Callable[[], bool], auto: bool) -> Callable[[], bool]:
    """``enabled``, and with ``auto`` also "system-metrics is not active" (asked per collection,
    so the order in which ``opentelemetry-instrument`` loads the two does not matter)."""
    if not auto:
        return enabled
    return lambda: enabled() and not system_metrics_active()


def register_otel(
    meter: Any, reader: Optional[ProcessReader] = None, enabled: Callable[[], bool] = lambda: True
) -> list[Any]:
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
            return [(float(row[index]), {"cpython.gc.generation": int(row[0])}) for row in gc_stats()]

        return cb

    c = "runtime.otel"
    return [
        otel_observable(meter, M.PROCESS_RSS, None, one("rss"), c, enabled),
        otel_observable(meter, M.PROCESS_VMS, None, one("vms"), c, enabled),
        otel_observable(meter, M.PROCESS_USS, None, one("uss"), c, enabled),
        otel_observable(meter, M.PROCESS_FDS, None, one("fds"), c, enabled),
        otel_observable(meter, M.PROCESS_THREADS, None, one("threads"), c, enabled),
        otel_observable(meter, M.PROCESS_CPU, None, cpu, c, enabled),
        otel_observable(meter, M.GC_COLLECTIONS, None, gc_field(1), c, enabled),
        otel_observable(meter, M.GC_COLLECTED, None, gc_field(2), c, enabled),
        otel_observable(meter, M.GC_UNCOLLECTABLE, None, gc_field(3), c, enabled),
    ]


__all__ = [
    "RuntimeCollector",
    "ProcessReader",
    "system_metrics_active",
    "runtime_enabled",
    "ProcessStats",
    "register_otel",
    "gc_stats",
    "uss_from_smaps_rollup",
    "otel_observable",
]
