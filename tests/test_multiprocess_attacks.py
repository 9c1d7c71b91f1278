"""Multi-process files that cannot go backwards or be hijacked (issue 12, 3-5).

Complete writes (short writes continued, a failed write leaves the old file whole), temp files
made with ``mkstemp`` (no predictable name, no symlink followed), a file that does not parse
keeps its process's last good state (counted), directories other users can write to refused,
and a refused, read-only or unusable directory degrading to the single-process endpoint with a
message saying what is wrong. As root, the full-size checks of ``benchmarks/mp_attack.py``: a
nearly full tmpfs and user ``nobody`` planting symlinks.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from e6observe import _safe
from e6observe.recorder import Recorder
from e6observe.sinks import multiprocess as mp
from e6observe.sinks.prometheus import PrometheusSink

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def d(tmp_path: Path) -> Path:
    p = tmp_path / "mp"
    p.mkdir(mode=0o700)
    return p


def count_of(v: Any) -> float:
    rows = v.histograms.get("e6data_query_duration_seconds", {})
    return float(sum(sum(c) for c, _ in rows.values()))


# -- writes ---------------------------------------------------------------------------------------
def test_short_writes_are_continued(d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write
    monkeypatch.setattr(mp.os, "write", lambda fd, data: real(fd, bytes(data[:7])))
    target = d / "state.json"
    payload = json.dumps({"v": 1, "x": "y" * 5000}).encode()
    mp._write_atomic(str(target), payload)
    assert target.read_bytes() == payload


def test_a_failed_write_leaves_the_old_file_whole_and_no_temp_file(
    d: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = d / "state.json"
    target.write_bytes(b'{"v": 1, "good": true}')
    real = os.write
    calls = {"n": 0}

    def full_disk(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real(fd, bytes(data[:4096]))  # a short write: the disk is nearly full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mp.os, "write", full_disk)
    with pytest.raises(OSError):
        mp._write_atomic(str(target), b"x" * 10000)
    assert target.read_bytes() == b'{"v": 1, "good": true}'
    assert sorted(os.listdir(d)) == ["state.json"]


def test_a_planted_symlink_at_the_old_temp_name_is_not_followed(d: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root only\n")
    victim.chmod(0o600)
    target = d / "e6observe-1-abcd.json"
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # every name the old scheme used
        os.symlink(victim, f"{target}.tmp{pid}")
    mp._write_atomic(str(target), b'{"v": 1}')
    assert victim.read_text() == "root only\n"
    assert target.read_bytes() == b'{"v": 1}' and not target.is_symlink()


def test_a_writer_counts_a_failed_write_and_retries_it(
    d: Path, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _safe.reset_for_tests()
    w = mp.ProcessStateWriter(str(d), rec)
    try:
        before = Path(w.path).read_bytes()

        def no_space(path: str, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(mp, "_write_atomic", no_space)
        rec.query_finished("blue", "ok", 0.01)
        assert w.write() is False
        assert w.failed_writes == 1
        assert _safe.internal_errors().get("sink.multiprocess") == 1
        assert Path(w.path).read_bytes() == before  # the previous state, whole
        monkeypatch.undo()
        assert w.write() is True  # the next flush publishes it
        assert json.loads(Path(w.path).read_text())["h"]
    finally:
        w.close()


# -- reads ----------------------------------------------------------------------------------------
def test_a_file_that_stops_parsing_keeps_its_last_good_state(d: Path, rec: Recorder) -> None:
    """A live process's file truncated (as the old writer did on a full disk): the merged count
    must not drop, and the parse error is counted."""
    _safe.reset_for_tests()
    other = Recorder()
    try:
        w = mp.ProcessStateWriter(str(d), other)  # "another process" (its lock is held)
        for _ in range(5):
            other.query_finished("blue", "ok", 0.01)
        w.write()
        coll = mp.MultiProcessCollector(str(d))
        first = count_of(coll.view())
        assert first == 5
        body = Path(w.path).read_bytes()
        Path(w.path).write_bytes(body[: len(body) // 2])  # truncated JSON replaces it
        assert count_of(coll.view()) == first
        assert _safe.internal_errors().get("sink.multiprocess", 0) >= 1
        for _ in range(3):
            other.query_finished("blue", "ok", 0.01)
        w.write()  # a good file again: counting goes on
        assert count_of(coll.view()) == 8
        w.close()
    finally:
        other.stop()


def test_planted_symlinks_and_fifos_are_not_read(d: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"v": 1, "c": {}}')
    os.symlink(secret, d / "e6observe-dead.json")
    os.mkfifo(d / "e6observe-77-feed.json")  # a reader that opened this would block
    os.symlink(secret, d / "e6observe-77-feed.lock")
    coll = mp.MultiProcessCollector(str(d))
    v = coll.view()  # returns (no hang), reads neither
    assert count_of(v) == 0


# -- the directory --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o777, 0o770, 0o757])
def test_a_directory_other_users_can_write_is_refused(d: Path, mode: int) -> None:
    d.chmod(mode)
    with pytest.raises(mp.UnusableDirectory, match="can be written by other users") as err:
        mp.check_directory(str(d))
    assert f"{mode:04o}" in str(err.value) and "chmod" in str(err.value)


def test_a_sticky_directory_of_our_own_is_accepted(d: Path) -> None:
    d.chmod(0o1777)
    mp.check_directory(str(d))
    d.chmod(0o700)
    mp.check_directory(str(d))


def _serves_single_process(sink: PrometheusSink) -> bool:
    return not sink.multiprocess and type(sink.collector).__name__ == "RecorderCollector"


def test_a_shared_directory_degrades_to_the_single_process_endpoint(
    d: Path, rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    from e6observe.config import Options

    d.chmod(0o777)
    opts = Options.resolve({"multiprocess_dir": str(d), "prometheus_port": 0}, environ={})
    with caplog.at_level(logging.WARNING, logger="e6observe"):
        sink = PrometheusSink(rec, opts).start()
    try:
        assert _serves_single_process(sink)
        assert sink.server is not None and sink.server.running
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1, lines
        assert "can be written by other users" in lines[0] and "0777" in lines[0]
        assert "prometheus_port" not in lines[0]  # not the port's fault
        assert os.listdir(d) == []  # nothing written into it
        from e6observe.endpoint.server import MetricsServer

        assert isinstance(sink.server, MetricsServer)
        import attacks

        code, body = attacks.http_get(sink.server.port)
        assert code == 200 and b"e6data_query_duration_seconds" in body
    finally:
        sink.close()


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory this process cannot write: a read-only tmpfs as root, else mode 0500."""
    p = tmp_path / "ro"
    p.mkdir(mode=0o700)
    if IS_ROOT:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k,mode=0700", "tmpfs", str(p)], capture_output=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs: {r.stderr.decode().strip()}")
        try:
            yield p, "read-only file system"
        finally:
            subprocess.run(["umount", "-l", str(p)], check=False)
    else:
        p.chmod(0o500)
        try:
            yield p, "is not writable by this process"
        finally:
            p.chmod(0o700)


def test_a_read_only_directory_degrades_with_a_message_saying_so(
    readonly_dir: tuple[Path, str], rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    import e6observe
    from e6observe import _api

    path, why = readonly_dir
    with caplog.at_level(logging.WARNING, logger="e6observe"):
        e6observe.instrument(multiprocess_dir=str(path), prometheus_port=0, otel=False)
    try:
        inst = _api._active
        assert inst is not None
        sink = next(o for c, o, _ in inst.sinks if c == "sink.prometheus")
        assert _serves_single_process(sink) and sink.server.running
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1, lines
        assert why in lines[0] and str(path) in lines[0]
        assert "prometheus_port" not in lines[0]
    finally:
        e6observe.uninstrument()


# -- full size, as root ---------------------------------------------------------------------------
def _mp_attack(*args: str, timeout: float) -> dict[str, Any]:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mp_attack.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if r.returncode == 3:  # root, but no mount(2) here (a container without CAP_SYS_ADMIN)
        pytest.skip(json.loads(r.stdout)["skipped"])
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.mark.skipif(not IS_ROOT, reason="mounting a small tmpfs needs root")
@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount(8)")
@pytest.mark.slow
def test_merged_counters_never_decrease_on_a_nearly_full_filesystem() -> None:
    out = _mp_attack("fullfs", "--scrapes", "40", timeout=120)
    assert out["scrapes"] >= 36, out
    assert out["decreases"] == 0, out
    assert out["last"] > out["first"], out  # counting went on


@pytest.mark.skipif(not IS_ROOT, reason="switching to user nobody needs root")
@pytest.mark.parametrize("sticky", [False, True])
@pytest.mark.slow
def test_nobody_planting_symlinks_writes_nothing_outside_the_directory(sticky: bool) -> None:
    import pwd

    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    out = _mp_attack("symlink", "--seconds", "3", *(["--sticky"] if sticky else []), timeout=90)
    assert out["victim_changed"] is False, out
    if not sticky:  # 0777, not sticky: refused with one clear line
        assert any("can be written by other users" in w for w in out["worker_warnings"]), out
