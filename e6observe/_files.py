"""Files e6observe writes (multi-process state, ``e6observe export``): all at once or not at all.

:func:`write_atomic` makes its temp file with ``mkstemp`` in the target's directory
(unpredictable name, ``O_EXCL``, no symlink followed), continues short writes, checks the size,
and only then renames it over the target (a symlink at the target is replaced, never followed).
"""

from __future__ import annotations

import errno
import os
import tempfile


def write_atomic(path: str, data: bytes, prefix: str) -> None:
    """Replace ``path`` with ``data`` (mode 0644), or leave it as it was and raise ``OSError``."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=os.path.dirname(path) or ".")
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                if n <= 0:  # pragma: no cover - os.write raises rather than returning 0
                    raise OSError(errno.EIO, "short write")
                view = view[n:]
            size = os.fstat(fd).st_size
            if size != len(data):
                raise OSError(errno.EIO, f"wrote {size} of {len(data)} bytes")
            os.fchmod(fd, 0o644)  # readable by scrapers, as prometheus_client's files are
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
