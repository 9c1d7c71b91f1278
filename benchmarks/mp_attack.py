"""Multi-process mode against a full disk and a hostile local user (issue 12), as root.

    .venv/bin/python benchmarks/mp_attack.py fullfs  [--scrapes 100]
    .venv/bin/python benchmarks/mp_attack.py symlink [--seconds 10] [--sticky]

* ``fullfs``: mounts a 1 MiB tmpfs, starts 3 worker processes (``instrument(multiprocess_dir=..)``,
  one serving /metrics, each recording queries quickly), and a filler that keeps the file system
  nearly full (0-16 KiB free, changing every 50 ms). Scrapes ``--scrapes`` times and prints how
  often the merged ``e6data_query_duration_seconds_count`` went backwards.
* ``symlink``: a 0777 directory (``--sticky``: 1777, owned by root), a root-owned 0600 file
  outside it, and user ``nobody`` planting symlinks to that file under every name it can predict
  (each state file's ``.tmp<pid>``, the lock files, the dead-process file) while a root worker
  writes its state. Prints whether the file outside changed, and what the worker said.

Everything stops by itself; the tmpfs is unmounted at the end. Linux, root only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(args: argparse.Namespace) -> int:
    """One application process: records queries as fast as the writer's rate limit allows."""
    import e6observe

    rec = e6observe.instrument(
        multiprocess_dir=args.dir, prometheus_port=args.port, otel=False, watcher_interval=0.05
    )
    assert rec is not None
    print(json.dumps({"ready": os.getpid()}), flush=True)
    end = time.monotonic() + args.seconds
    i = 0
    # The RPC series a real connector produces: a state file of several kB, as in the field.
    methods = [
        "authenticate",
        "prepareStatement",
        "executeStatement",
        "getNextResultBatch",
        "getResultMetadata",
        "clear",
        "status",
        "getTables",
        "getSchemaNames",
    ]
    hists = [
        rec.rpc_histogram(m, s, c) for m in methods for s in ("blue", "green") for c in ("OK", "UNAVAILABLE")
    ]
    while time.monotonic() < end:
        rec.query_finished("blue", "ok", 0.001 * (i % 50))
        hists[i % len(hists)].observe(0.0001 * (i % 97))
        i += 1
        if i % 200 == 0:
            rec.detected("green" if i % 400 else "blue")  # an event: an immediate write
            time.sleep(0.01)
    e6observe.uninstrument()
    return 0


def _spawn_worker(d: str, port: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "worker",
            "--dir",
            d,
            "--port",
            str(port),
            "--seconds",
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _merged_count(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("e6data_query_duration_seconds_count{")
    )


class CannotMount(Exception):
    """No tmpfs could be mounted (no CAP_SYS_ADMIN in this container, say)."""


def _filler(mnt: str, stop_at: float, stats: dict[str, int]) -> None:
    """Keep ``mnt`` nearly full: fill it, then free 0-16 KiB, every 50 ms."""
    path = os.path.join(mnt, "filler")
    free_steps = [0, 4096, 8192, 16384]
    block = b"\0" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        i = 0
        while time.monotonic() < stop_at:
            try:
                while True:
                    os.write(fd, block)
            except OSError:
                stats["full"] = stats.get("full", 0) + 1
            size = os.lseek(fd, 0, os.SEEK_END)
            os.ftruncate(fd, max(0, size - free_steps[i % len(free_steps)]))
            os.lseek(fd, 0, os.SEEK_END)
            i += 1
            time.sleep(0.05)
    finally:
        os.close(fd)


def fullfs(args: argparse.Namespace) -> dict[str, Any]:
    mnt = tempfile.mkdtemp(prefix="e6o-tmpfs-")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", mnt], capture_output=True, text=True
    )
    if r.returncode != 0:
        os.rmdir(mnt)
        raise CannotMount(r.stderr.strip() or f"mount exited {r.returncode}")
    procs: list[subprocess.Popen[str]] = []
    try:
        d = os.path.join(mnt, "mp")
        os.mkdir(d, 0o700)
        port = _free_port()
        seconds = args.scrapes * 0.2 + 20
        procs = [_spawn_worker(d, port, seconds) for _ in range(3)]
        for p in procs:
            assert p.stdout is not None
            p.stdout.readline()
        time.sleep(1.0)
        import threading

        stop_at = time.monotonic() + args.scrapes * 0.2 + 5
        stats: dict[str, int] = {}
        threading.Thread(target=_filler, args=(mnt, stop_at, stats), daemon=True).start()
        values: list[float] = []
        errors = 0
        for _ in range(args.scrapes):
            try:
                values.append(_merged_count(port))
            except Exception:
                errors += 1
            time.sleep(0.15)
        drops = [(a, b) for a, b in zip(values, values[1:]) if b < a]
        return {
            "scrapes": len(values),
            "scrape_errors": errors,
            "decreases": len(drops),
            "times_filled": stats.get("full", 0),
            "worst_drop": min((b - a for a, b in drops), default=0.0),
            "first": values[0] if values else None,
            "last": values[-1] if values else None,
            "examples": drops[:5],
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


PLANTER = r"""
import os, sys, time
d, victim, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.monotonic() + seconds
planted = 0
while time.monotonic() < end:
    names = ["e6observe.lock", "e6observe-dead.json"]
    try:
        listing = os.listdir(d)
    except OSError:
        listing = []
    for n in listing:
        if n.startswith("e6observe-") and n.endswith(".json") and n != "e6observe-dead.json":
            stem = n[:-5]
            pid = stem.split("-")[1]
            names += [n + ".tmp" + pid, stem + ".lock"]
            names += [n + ".tmp" + str(int(pid) + k) for k in range(1, 4)]
    for n in names:
        p = os.path.join(d, n)
        try:
            os.symlink(victim, p)
            planted += 1
        except OSError:
            pass
    time.sleep(0.002)
print(planted)
"""


def symlink(args: argparse.Namespace) -> dict[str, Any]:
    import pwd

    nobody = pwd.getpwnam("nobody")
    base = tempfile.mkdtemp(prefix="e6o-symlink-")
    os.chmod(base, 0o755)
    d = os.path.join(base, "mp")
    os.mkdir(d)
    os.chmod(d, 0o1777 if args.sticky else 0o777)
    victim = os.path.join(base, "victim")
    with open(victim, "w") as f:
        f.write("root-only content\n")
    os.chmod(victim, 0o600)
    before = open(victim).read()
    try:
        # The system interpreter: nobody may not be able to run this one (under /root).
        py = next(
            (p for p in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable) if os.path.exists(p)),
            sys.executable,
        )
        planter = subprocess.Popen(
            [py, "-c", PLANTER, d, victim, str(args.seconds)],
            cwd="/",
            user=nobody.pw_uid,
            group=nobody.pw_gid,
            extra_groups=[],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.3)
        port = _free_port()
        # The worker lives a little while: a short life of writes, as an application would.
        w = _spawn_worker(d, port, max(1.0, args.seconds - 1.0))
        out, err = w.communicate(timeout=args.seconds + 30)
        planted = planter.communicate(timeout=args.seconds + 10)[0].strip()
        after = open(victim).read()
        return {
            "directory_mode": oct(os.stat(d).st_mode & 0o7777),
            "victim_changed": after != before,
            "victim_now": after[:80],
            "symlinks_planted": planted,
            "worker_warnings": [line for line in err.splitlines() if "e6observe" in line][:3],
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fullfs")
    f.add_argument("--scrapes", type=int, default=100)
    s = sub.add_parser("symlink")
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--sticky", action="store_true")
    w = sub.add_parser("worker")
    w.add_argument("--dir", required=True)
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    if args.cmd == "worker":
        return worker(args)
    if os.geteuid() != 0:
        sys.stderr.write("mp_attack.py: needs root (mounts a tmpfs / switches to nobody)\n")
        return 2
    try:
        out = fullfs(args) if args.cmd == "fullfs" else symlink(args)
    except CannotMount as exc:
        print(json.dumps({"skipped": f"cannot mount a tmpfs: {exc}"}))
        return 3
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
