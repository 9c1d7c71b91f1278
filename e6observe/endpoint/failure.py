"""One wording for a metrics endpoint that cannot start, shared by ``instrument()`` and the
commands that serve one (``e6observe demo``, ``e6observe probe``).

``instrument()`` never raises for it: it logs one warning and carries on without the endpoint.
A command has nothing to show without its endpoint, so it catches that warning
(:class:`catch_endpoint_failure`) and exits with one line of its own instead, exit status 1:

    e6observe: cannot serve /metrics on 127.0.0.1:9464: port already in use; ...
    e6observe demo: cannot serve /metrics on 127.0.0.1:9464: port already in use; ...
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any, Optional

#: The attribute of the warning's log record that carries the short reason.
RECORD_ATTR = "e6observe_endpoint_failure"
#: Exit status of a command whose endpoint cannot start.
EXIT_STATUS = 1
_PREFIX = "e6observe metrics endpoint: "


def reason(exc: BaseException) -> str:
    """Why the endpoint did not start, in a few words (no doubled prefixes)."""
    from .server import MetricsServerTLSError

    if isinstance(exc, MetricsServerTLSError):
        text = str(getattr(exc, "strerror", "") or exc)
        return text[len(_PREFIX) :] if text.startswith(_PREFIX) else text
    code = getattr(exc, "errno", None)
    if code == errno.EADDRINUSE:
        return "port already in use"
    if code:
        return os.strerror(code).lower()
    text = str(getattr(exc, "strerror", "") or exc or type(exc).__name__)
    return text[len(_PREFIX) :] if text.startswith(_PREFIX) else text


def cannot_serve(addr: str, port: Any, exc: BaseException) -> str:
    """``cannot serve /metrics on ADDR:PORT: REASON``."""
    return f"cannot serve /metrics on {addr}:{port}: {reason(exc)}"


class catch_endpoint_failure(logging.Filter):
    """Context manager: while open, ``instrument()``'s endpoint warning is not logged but kept in
    :attr:`message` (``cannot serve ...``), for a command to report its own way."""

    def __init__(self) -> None:
        super().__init__()
        self.message: Optional[str] = None
        self._logger = logging.getLogger("e6observe")

    def filter(self, record: logging.LogRecord) -> bool:
        caught = getattr(record, RECORD_ATTR, None)
        if caught is None:
            return True
        self.message = str(caught)
        return False

    def __enter__(self) -> catch_endpoint_failure:
        self._logger.addFilter(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._logger.removeFilter(self)


__all__ = ["reason", "cannot_serve", "catch_endpoint_failure", "EXIT_STATUS"]
