"""tests/subproc.py: children of the test process (which runs gRPC) start without fork()."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import subproc

from e6observe.sim import Simulator

# Python 3.9 is where subprocess forks: the legacy run of ./run test.
pytestmark = pytest.mark.matrix


def test_children_start_in_cwd_with_the_program_found_on_path(tmp_path: Path, monkeypatch: Any) -> None:
    spawned: list[Any] = []
    if subproc.USE_POSIX_SPAWN:
        real = subprocess.Popen._posix_spawn  # type: ignore[attr-defined]

        def spy(self: Any, args: Any, executable: Any, *rest: Any) -> Any:
            spawned.append(executable)
            return real(self, args, executable, *rest)

        monkeypatch.setattr(subprocess.Popen, "_posix_spawn", spy)
    proc = subproc.run(["pwd"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert os.path.samefile(proc.stdout.strip(), tmp_path)
    p = subproc.popen(
        [sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = p.communicate("abc", timeout=30)
    assert p.returncode == 0 and out.strip() == "ABC"
    if subproc.USE_POSIX_SPAWN:  # both through posix_spawn: fork() never ran
        assert len(spawned) == 2


@pytest.mark.skipif(not subproc.USE_POSIX_SPAWN, reason="only Python < 3.10 forks in subprocess")
def test_options_that_need_fork_are_refused() -> None:
    with pytest.raises(TypeError, match="preexec_fn"):
        subproc.run(["true"], preexec_fn=lambda: None)
    with pytest.raises(TypeError, match="close_fds"):
        subproc.run(["true"], close_fds=True)
    with pytest.raises(FileNotFoundError):
        subproc.run(["no-such-program-e6observe"])


def test_children_of_a_process_running_grpc_are_not_killed_before_exec() -> None:
    """grpc/grpc#43055: with fork(), about 1 child in 10 died with SIGABRT before exec while
    this process ran gRPC threads (grpcio 1.80, Python 3.9). 60 children: at that rate the
    old way fails this test with probability > 0.99."""
    with Simulator(port=0):
        codes = [subproc.run(["true"], timeout=30).returncode for _ in range(60)]
    assert codes == [0] * 60, f"{sum(c != 0 for c in codes)} of 60 children failed: {set(codes)}"
