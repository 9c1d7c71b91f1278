"""Start the benchmark's simulator process pinned as the harness pins (imports nothing heavy:
the measured process stays as it was)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def start_pinned(latency_ms: float = 0.0) -> tuple[subprocess.Popen[str], int, bool]:
    """Start ``simproc.py`` and read its port. With 2+ allowed CPUs the simulator runs on the
    first and the calling process (with every thread it starts from now on) on the second, as
    ``run.py`` pins them. Returns the process (the caller kills it), its port, and whether it
    pinned."""
    allowed = sorted(os.sched_getaffinity(0))
    pin = len(allowed) >= 2
    sim = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "simproc.py"), str(latency_ms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=(lambda: os.sched_setaffinity(0, {allowed[0]})) if pin else None,
    )
    try:
        assert sim.stdout is not None
        port = int(json.loads(sim.stdout.readline())["port"])
    except BaseException:
        sim.kill()
        raise
    if pin:
        os.sched_setaffinity(0, {allowed[1]})
    return sim, port, pin
