"""``e6observe demo`` as a user runs it: a real process, its screen, its /metrics."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Optional

import pytest
import subproc

from e6observe import cli
from e6observe.demo import DEMO_PASSWORD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Demo:
    """A ``python -m e6observe demo`` child process whose output is read as it comes."""

    def __init__(self, *args: str) -> None:
        self.proc = subproc.popen(
            [sys.executable, "-m", "e6observe", "demo", *args], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line)

    def wait_for(self, pattern: str, timeout: float) -> Optional[re.Match[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.out):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                return None
            time.sleep(0.05)
        return None

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.err = self.proc.stderr.read()
        return rc

    @property
    def text(self) -> str:
        return "".join(self.out)


def switches_total(url: str) -> float:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(m.group(1)) for m in
               re.finditer(r"^e6data_strategy_switches_total\{[^}]*\} (\S+)$", body, re.M))


def test_demo_switches_show_on_metrics_during_the_run() -> None:
    demo = Demo("--duration", "12", "--flip-every", "4", "--threads", "2",
                "--metrics-port", "0")
    scraped: list[str] = []
    seen = 0.0
    try:
        m = demo.wait_for(r"metrics: (http://127\.0\.0\.1:\d+/metrics)", 30)
        assert m, demo.text
        url = m.group(1)
        while demo.proc.poll() is None and seen == 0:
            try:
                seen = switches_total(url)
                scraped.append(urllib.request.urlopen(url, timeout=5).read().decode())
            except OSError:
                break  # the run ended between two scrapes
            time.sleep(0.5)
    finally:
        rc = demo.finish(40)
    assert rc == 0, demo.err
    assert seen > 0, "no switch on /metrics during the run"
    text = demo.text
    summary = re.search(r"connector: (\d+) switches seen by e6observe", text)
    assert summary and int(summary.group(1)) >= seen
    timeline = text.split("switch timeline:", 1)[1].strip().splitlines()
    rows = [r for r in timeline[1:] if "->" in r]
    assert len(rows) == int(summary.group(1))  # one timeline row per switch
    assert all(re.search(r"(announced|mismatch|observed)", r) for r in rows)
    # The 2nd deployment (at 8 s) is abrupt: clients can only learn of it from 456 errors.
    assert any("mismatch" in r for r in rows)
    assert "1 abrupt" in text
    for output in [text, demo.err, *scraped]:
        assert DEMO_PASSWORD not in output


@pytest.mark.matrix
def test_demo_ends_cleanly_on_sigterm() -> None:
    demo = Demo("--duration", "0", "--flip-every", "1", "--threads", "2", "--metrics-port", "0")
    try:
        assert demo.wait_for(r"metrics: http://", 30), demo.text
        time.sleep(2.5)  # at least two deployments
        demo.proc.send_signal(signal.SIGTERM)
    finally:
        rc = demo.finish(20)
    assert rc == 0, demo.err
    assert "switch timeline:" in demo.text
    assert DEMO_PASSWORD not in demo.text + demo.err


def test_demo_redraws_in_place_on_a_terminal() -> None:
    master, slave = pty.openpty()
    proc = subproc.popen(
        [sys.executable, "-m", "e6observe", "demo", "--duration", "3", "--flip-every", "1",
         "--threads", "1", "--metrics-port", "0"], cwd=ROOT, stdout=slave, stderr=slave,
        stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert rc == 0, screen
    redraws = screen.count("\x1b[7F\x1b[J")  # cursor up over the 7-line view, clear below
    assert redraws >= 3  # about two a second for three seconds
    assert "connector strategy" in screen and "switch timeline:" in screen
    assert DEMO_PASSWORD not in screen


def test_a_taken_metrics_port_is_one_clear_error() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        demo = Demo("--duration", "1", "--metrics-port", str(port))
        rc = demo.finish(30)
    finally:
        holder.close()
    assert rc == 2
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in demo.err
    assert "--metrics-port" in demo.err
    assert "Traceback" not in demo.err


@pytest.mark.parametrize("flag,value", [("--threads", "0"), ("--flip-every", "0"),
                                        ("--duration", "-1"), ("--metrics-port", "70000"),
                                        ("--latency-ms", "nan")])
def test_bad_flags_are_refused_by_the_parser(flag: str, value: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        cli.main(["demo", flag, value])
    assert ei.value.code == 2
    assert flag in capsys.readouterr().err


def test_a_bad_environment_option_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("E6OBSERVE_WATCHER_INTERVAL", "-1")
    rc = cli.main(["demo", "--duration", "1", "--metrics-port", "0"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines() == [
        "e6observe demo: error: E6OBSERVE_WATCHER_INTERVAL must be > 0 and <= 86400 seconds, "
        "got -1.0"]
