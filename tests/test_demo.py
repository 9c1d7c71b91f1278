"""``e6observe demo`` as a user runs it: a real process, its screen, its /metrics."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from typing import Optional

import pytest
import subproc

from e6observe import cli
from e6observe.cli.demo import DEMO_PASSWORD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Demo:
    """A ``python -m e6observe demo`` child process whose output is read as it comes."""

    def __init__(self, *args: str) -> None:
        self.proc = subproc.popen(
            [sys.executable, "-m", "e6observe", "demo", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
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
    return sum(
        float(m.group(1)) for m in re.finditer(r"^e6data_strategy_switches_total\{[^}]*\} (\S+)$", body, re.M)
    )


@pytest.mark.slow
def test_demo_switches_show_on_metrics_during_the_run() -> None:
    demo = Demo("--duration", "12", "--flip-every", "4", "--threads", "2", "--metrics-port", "0")
    scraped: list[str] = []
    seen = 0.0
    try:
        m = demo.wait_for(r"metrics: +(http://127\.0\.0\.1:\d+/metrics)", 30)
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
    summary = re.search(r"connector \(as e6observe saw it\): (\d+) switches", text)
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
@pytest.mark.slow
def test_demo_ends_cleanly_on_sigterm() -> None:
    demo = Demo("--duration", "0", "--flip-every", "1", "--threads", "2", "--metrics-port", "0")
    try:
        assert demo.wait_for(r"metrics: +http://", 30), demo.text
        time.sleep(2.5)  # at least two deployments
        demo.proc.send_signal(signal.SIGTERM)
    finally:
        rc = demo.finish(20)
    assert rc == 0, demo.err
    assert "switch timeline:" in demo.text
    assert DEMO_PASSWORD not in demo.text + demo.err


def run_on_terminal(columns: int, *args: str) -> tuple[int, str]:
    """The demo on a pseudo-terminal ``columns`` wide: (exit status, everything it showed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subproc.popen(
        [sys.executable, "-m", "e6observe", "demo", *args],
        cwd=ROOT,
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env=env,
    )
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
    return rc, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_demo_redraws_in_place_on_an_80_column_terminal() -> None:
    rc, screen = run_on_terminal(
        80, "--duration", "3", "--flip-every", "1", "--threads", "1", "--metrics-port", "0"
    )
    assert rc == 0, screen
    redraws = screen.count("\x1b[7F\x1b[J")  # cursor up over the 7-line view, clear below
    assert redraws >= 3  # about two a second for three seconds
    assert "connector" in screen and "switch timeline:" in screen
    assert DEMO_PASSWORD not in screen
    # Every line fits: the live view in its compact form, the banner and the summary wrapped.
    lines = re.sub(r"\x1b\[\d*[A-Za-z]", "", screen).replace("\r", "").split("\n")
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, too_wide
    # and nothing the old view lost at 80 columns is cut any more
    view = [line for line in lines if line.startswith("  queries")]
    assert view and all(re.search(r"in flight blue \d+, green \d+$", line) for line in view), view
    deploy = [line for line in lines if line.startswith("demo ")]
    assert deploy and all(re.search(r"\d+ announced, \d+ abrupt$", line) for line in deploy)


@pytest.mark.slow
def test_demo_uses_a_wide_terminal() -> None:
    rc, screen = run_on_terminal(132, "--duration", "2", "--threads", "1", "--metrics-port", "0")
    assert rc == 0, screen
    assert "connector strategy :" in screen and "(announced 0, mismatch 0, observed 0)" in screen


def test_the_banner_names_every_page_and_the_reading_commands() -> None:
    demo = Demo("--duration", "1", "--threads", "1", "--metrics-port", "0")
    rc = demo.finish(40)
    assert rc == 0, demo.err
    m = re.search(r"status page: (http://127\.0\.0\.1:\d+)/\n", demo.text)
    assert m, demo.text
    base = m.group(1)
    for expected in (
        f"metrics:     {base}/metrics",
        f"events:      {base}/events",
        f"e6observe status --url {base}",
        f"e6observe tail --url {base}",
    ):
        assert expected in demo.text


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
    assert rc == 1
    assert demo.err.strip().splitlines() == [
        f"e6observe demo: cannot serve /metrics on 127.0.0.1:{port}: port already in use; "
        "choose another --metrics-port (0 = any free port)"
    ]


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--threads", "0"),
        ("--flip-every", "0"),
        ("--duration", "-1"),
        ("--metrics-port", "70000"),
        ("--latency-ms", "nan"),
    ],
)
def test_bad_flags_are_refused_by_the_parser(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ei:
        cli.main(["demo", flag, value])
    assert ei.value.code == 2
    assert flag in capsys.readouterr().err


def test_a_bad_environment_option_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("E6OBSERVE_WATCHER_INTERVAL", "-1")
    rc = cli.main(["demo", "--duration", "1", "--metrics-port", "0"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines() == [
        "e6observe demo: error: E6OBSERVE_WATCHER_INTERVAL must be > 0 and <= 86400 seconds, got -1.0"
    ]


def test_the_summary_says_why_the_connectors_counts_differ_from_the_clusters() -> None:
    """The issue's run: the cluster made 3 announced and 2 abrupt deployments, the connector saw
    announced 1, mismatch 4."""
    from e6observe.cli.demo import Deployer, explain

    dep = Deployer(sim=None, every=10.0, abrupt_every=3)
    dep.announced, dep.abrupt = 3, 2
    lines = explain(
        {"switches": 5, "mismatches_total": 9}, dep, {"announced": 1, "mismatch": 4, "observed": 0}, 9
    )
    assert lines == [
        "2 abrupt deployments had no announcement: the connector learned of them from 456 "
        "errors, so they count as mismatch switches.",
        "2 announced deployments applied through 456 because a query was still pinned to the "
        "old colour: a query id the connector kept after the abrupt switch blocks every later "
        "graceful switch (docs/simulator.md).",
    ]
    # counts that agree need no explanation
    dep.announced, dep.abrupt = 2, 0
    assert (
        explain(
            {"switches": 2, "mismatches_total": 0}, dep, {"announced": 2, "mismatch": 0, "observed": 0}, 0
        )
        == []
    )
    # a deployment the connector never saw
    assert explain(
        {"switches": 2, "mismatches_total": 0}, dep, {"announced": 1, "mismatch": 0, "observed": 0}, 0
    ) == [
        "1 deployment not seen as a switch by the connector: no query ran on the new colour "
        "before the next deployment or the end."
    ]


def test_failed_queries_are_counted_by_cause() -> None:
    from e6observe.cli.demo import FAILURE_CAUSES, failure_cause

    class Rpc(Exception):
        def code(self) -> object:
            class C:
                name = "UNKNOWN"

            return C()

        def details(self) -> str:
            return "status: 456"

    assert failure_cause("fetch", Rpc()) == "fetch-456" and "fetch-456" in FAILURE_CAUSES
    assert failure_cause("execute", Rpc()) == "execute-456" and "execute-456" in FAILURE_CAUSES
    assert failure_cause("connect", ConnectionError("x")) == "connect: ConnectionError"
