"""Start child processes from the test process without running gRPC's fork handlers.

Every test that starts a program uses :func:`popen` / :func:`run` (subprocess's arguments).

Why: the test process runs gRPC (the simulator's server, the connector's channels) and grpcio's
threads stay alive after first use. On Python < 3.10, ``subprocess`` starts a child with
``fork()`` and then ``exec()``. grpcio's ``pthread_atfork`` child handler restarts its event
engine's threads in the fork child; ``close_fds`` then closes the poller's epoll descriptor, and
a poller thread that reaches ``epoll_wait`` before the ``exec`` aborts the child: exit -6
(SIGABRT), only ``ev_epoll1_linux.cc ... epoll_wait error: Bad file descriptor`` on stderr,
the program never started. Measured with grpcio 1.80 on Python 3.9: 1 spawn in 30 to 1 in 5,
depending on load (grpc/grpc#43055; docs/configuration.md, "Starting programs from a connector
process on Python 3.9"). Python >= 3.10 starts children with ``vfork()``, which runs no fork
handlers.

On Python < 3.10 these helpers start the child through ``posix_spawn`` instead (glibc spawns
with ``clone(CLONE_VM | CLONE_VFORK)``, no fork handlers). Python 3.9 takes that path only
with ``close_fds=False``, no ``cwd`` and a program path with a directory, so: ``close_fds`` is
False (Python's and gRPC's own descriptors are close-on-exec anyway), the program is resolved
on ``PATH``, and ``cwd`` is applied by a tiny trampoline (``python -I -S``, which changes
directory and execs the program). Options that need fork (``preexec_fn``, ``pass_fds``,
``start_new_session``...) are refused there rather than silently taking the fork path.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from typing import Any, Sequence

#: True where subprocess would fork() (and so run grpcio's fork handlers) without these helpers.
USE_POSIX_SPAWN = sys.version_info < (3, 10)

_FORK_ONLY = (
    "preexec_fn",
    "pass_fds",
    "start_new_session",
    "user",
    "group",
    "extra_groups",
    "umask",
    "shell",
)
_CHDIR_EXEC = "import os, sys; os.chdir(sys.argv[1]); os.execv(sys.argv[2], sys.argv[3:])"


def spawn_arguments(args: Sequence[Any], kw: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """``(args, kwargs)`` for subprocess that take its posix_spawn path on Python < 3.10."""
    if not USE_POSIX_SPAWN:
        return list(args), kw
    if isinstance(args, (str, bytes)):
        raise TypeError("tests.subproc: pass the command as a list of arguments")
    used = [k for k in _FORK_ONLY if kw.get(k) not in (None, False, (), -1)]
    if used or kw.get("close_fds"):
        raise TypeError(
            f"tests.subproc: {used or ['close_fds']} would make subprocess fork() "
            "in the test process (grpcio's fork handlers, see the module docstring)"
        )
    for k in _FORK_ONLY:
        kw.pop(k, None)
    args = [os.fspath(a) for a in args]
    exe = os.fspath(kw.pop("executable", None) or args[0])
    if not os.path.dirname(exe):
        env = kw.get("env")
        found = shutil.which(exe, path=(os.environ if env is None else env).get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), exe)
        exe = found
    cwd = kw.pop("cwd", None)
    if cwd is not None:
        cwd = os.fspath(cwd)
        if not os.path.isdir(cwd):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cwd)
        args = [sys.executable, "-I", "-S", "-c", _CHDIR_EXEC, cwd, exe, *args]
        exe = sys.executable
    kw["executable"] = exe
    kw["close_fds"] = False
    return args, kw


def popen(args: Sequence[Any], **kw: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **kw)``, never forking the test process."""
    a, k = spawn_arguments(args, kw)
    return subprocess.Popen(a, **k)


def run(args: Sequence[Any], **kw: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(args, **kw)``, never forking the test process."""
    a, k = spawn_arguments(args, kw)
    return subprocess.run(a, **k)
