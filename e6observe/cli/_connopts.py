"""Connection options shared by ``e6observe check`` and ``e6observe probe``.

Both commands connect to a cluster the way an application does: the real connector, the same
host/port/TLS arguments. Credentials come from the environment (``E6DATA_USERNAME`` /
``E6DATA_PASSWORD``, the names the connector's configuration guide uses) or from a file — never
from the command line, where they would show in ``ps``, shell history and pod specs — and they
are never printed: :class:`Credentials` hides the password from ``repr`` and :func:`redact`
scrubs it from any text a command is about to show. Also what both do with what they connect:
run a call with a deadline (:func:`call_with_deadline`), read a result's first value
(:func:`first_scalar`), describe a failure (:func:`describe_error`).
"""

from __future__ import annotations

import argparse
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, TypeVar

from . import _argtypes as A

T = TypeVar("T")

ENV_USERNAME = "E6DATA_USERNAME"
ENV_PASSWORD = "E6DATA_PASSWORD"

#: Keys accepted in a KEY=VALUE credentials file (case-insensitive).
_USER_KEYS = {"e6data_username", "username", "user"}
_PASSWORD_KEYS = {"e6data_password", "password", "token", "access_token"}
#: A credentials file is a few short lines; anything bigger is not one.
_MAX_CREDENTIALS_FILE = 64 * 1024


class UsageError(Exception):
    """Bad command-line input: the command prints the message and exits with status 2."""


@dataclass(frozen=True)
class Credentials:
    """A username and password; the password never appears in ``repr`` or ``str``."""

    username: str
    password: str = field(repr=False)

    def __str__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"


@dataclass(frozen=True)
class ConnectionOptions:
    """Everything needed to open a connector ``Connection``, credentials included."""

    host: str
    port: int
    credentials: Credentials = field(repr=False)
    cluster_name: Optional[str] = None
    secure: bool = False
    ssl_cert: Optional[str] = None
    auto_resume: bool = False
    catalog: Optional[str] = None
    database: Optional[str] = None

    @property
    def target(self) -> str:
        """``host:port`` for messages (no credentials)."""
        return f"{self.host}:{self.port}"

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``e6data_grpc.Connection`` (always keywords: 2.3.7 reordered)."""
        kw: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": self.credentials.username,
            "password": self.credentials.password,
            "secure": self.secure,
            "auto_resume": self.auto_resume,
        }
        if self.cluster_name:
            kw["cluster_name"] = self.cluster_name
        if self.ssl_cert:
            kw["ssl_cert"] = self.ssl_cert
        if self.catalog:
            kw["catalog"] = self.catalog
        if self.database:
            kw["database"] = self.database
        return kw

    def redact(self, text: str) -> str:
        """``text`` with the password hidden (see :func:`redact`)."""
        return redact(text, self.credentials)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--host``, ``--port``, ``--cluster-name``, TLS and credential-file options."""
    g = parser.add_argument_group(
        "cluster connection",
        f"Credentials are read from ${ENV_USERNAME} / ${ENV_PASSWORD} or from "
        "--credentials-file, never from the command line.",
    )
    g.add_argument("--host", required=True, help="e6data cluster host name or IP")
    g.add_argument("--port", type=A.remote_port, default=80, help="cluster port (default: 80)")
    g.add_argument("--cluster-name", default=None, help="cluster name (sent as the cluster-name header)")
    g.add_argument("--secure", action="store_true", help="connect with TLS")
    g.add_argument(
        "--ssl-cert",
        metavar="PATH",
        default=None,
        help="CA certificate (PEM) for --secure; default: the system CA bundle",
    )
    g.add_argument(
        "--credentials-file",
        metavar="PATH",
        default=None,
        help="file with the username and password: two lines, or "
        f"{ENV_USERNAME}=... / {ENV_PASSWORD}=... lines",
    )
    g.add_argument(
        "--auto-resume",
        action="store_true",
        help="let the connector resume a suspended cluster (off by default: a check "
        "or a prober should observe a suspended cluster, not wake it up)",
    )
    g.add_argument("--catalog", default=None, help="catalog to connect with (optional)")
    g.add_argument("--database", default=None, help="database to connect with (optional)")


def parse_credentials_file(text: str) -> Credentials:
    """Credentials from a file's text: ``KEY=VALUE`` lines or two bare lines (user, password).

    Blank lines and ``#`` comments are ignored; values may be quoted. Raises :class:`UsageError`
    with a message that never contains the file's content.
    """
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    user: Optional[str] = None
    password: Optional[str] = None
    keyed = [
        ln
        for ln in lines
        if "=" in ln
        and ln.split("=", 1)[0].strip().lower().removeprefix("export ").strip() in _USER_KEYS | _PASSWORD_KEYS
    ]
    if keyed:
        for ln in keyed:
            key, value = ln.split("=", 1)
            key = key.strip().lower().removeprefix("export ").strip()
            value = _unquote(value.strip())
            if key in _USER_KEYS:
                user = value
            else:
                password = value
    elif len(lines) == 2:
        user, password = lines[0], lines[1]
    else:
        raise UsageError(
            "credentials file: expected two lines (username, password) or "
            f"{ENV_USERNAME}=... and {ENV_PASSWORD}=... lines"
        )
    if not user or not password:
        raise UsageError("credentials file: both a username and a password are required")
    return Credentials(user, password)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def load_credentials(path: Optional[str], environ: Mapping[str, str]) -> Credentials:
    """Credentials from ``path`` if given, else from the environment; :class:`UsageError` if none."""
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read(_MAX_CREDENTIALS_FILE + 1)
        except OSError as exc:
            raise UsageError(f"cannot read credentials file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"credentials file {path} is not UTF-8 text") from None
        if len(text) > _MAX_CREDENTIALS_FILE:
            raise UsageError(f"credentials file {path} is too large to be a credentials file")
        return parse_credentials_file(text)
    user = environ.get(ENV_USERNAME, "")
    password = environ.get(ENV_PASSWORD, "")
    if not user or not password:
        missing = [n for n, v in ((ENV_USERNAME, user), (ENV_PASSWORD, password)) if not v]
        raise UsageError("no credentials: set " + " and ".join(missing) + " (or pass --credentials-file)")
    return Credentials(user, password)


def options_from_args(
    args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None
) -> ConnectionOptions:
    """Build :class:`ConnectionOptions` from parsed arguments; :class:`UsageError` on bad input."""
    creds = load_credentials(args.credentials_file, os.environ if environ is None else environ)
    if args.ssl_cert and not args.secure:
        raise UsageError("--ssl-cert needs --secure")
    if args.ssl_cert and not os.path.isfile(args.ssl_cert):
        raise UsageError(f"--ssl-cert: no such file: {args.ssl_cert}")
    host = args.host.strip()
    if not host:
        raise UsageError("--host must not be empty")
    return ConnectionOptions(
        host=host,
        port=args.port,
        credentials=creds,
        cluster_name=args.cluster_name or None,
        secure=bool(args.secure),
        ssl_cert=args.ssl_cert,
        auto_resume=bool(args.auto_resume),
        catalog=args.catalog,
        database=args.database,
    )


#: The fixed mask every hidden secret is shown as, whatever its length.
MASK = "***"
#: A key whose value is a secret wherever a message carries it: ``password=x``, ``token: x``,
#: ``"password": "x"``. The value ends at white space, a quote or a separator.
_SECRET_FIELD = re.compile(
    r"""(?P<key>\b(?:e6data_password|password|passwd|pwd|secret|access_token|token|api_key)"""
    r"""["']?\s*[=:]\s*(?P<q>["']?))(?P<value>[^\s"',;&)\]}]+)""",
    re.IGNORECASE,
)
#: A password at least this long with a character other than a letter is "secret-like": it is
#: masked wherever it stands as a whole run (no letter or digit on either side).
_SECRET_LIKE_MIN = 6


def _secret_like(password: str) -> bool:
    return len(password) >= _SECRET_LIKE_MIN and not password.isalpha()


def redact(text: str, credentials: Optional[Credentials]) -> str:
    """``text`` with the password hidden as :data:`MASK`; ordinary words are never rewritten.

    Server messages can echo request fields, so the password is hidden where it appears as a
    value: the value of a known secret field (``password=...``, ``"token": "..."``, whatever
    its value), a quoted value or the whole text. A secret-like password (6 characters or more,
    not only letters) is also hidden wherever it stands as a whole run, with no letter or digit
    next to it (``user:<password>@host``). A short or word-like password ("p", "connect") is
    never searched for inside ordinary text: that would turn "ipv4" into "i***v4" and "failed to
    connect" into a puzzle while protecting nothing a reader could not guess.
    """
    if not text:
        return text
    text = _SECRET_FIELD.sub(lambda m: m.group("key") + MASK, text)
    password = credentials.password if credentials is not None else ""
    if not password or password not in text:
        return text
    if text.strip() == password:
        return MASK
    quoted = "|".join(q + re.escape(password) + q for q in ("'", '"'))
    text = re.sub(quoted, lambda m: m.group(0)[0] + MASK + m.group(0)[0], text)
    if _secret_like(password):
        text = re.sub(r"(?<![A-Za-z0-9])" + re.escape(password) + r"(?![A-Za-z0-9])", MASK, text)
    return text


def describe_error(exc: BaseException, credentials: Optional[Credentials] = None, limit: int = 300) -> str:
    """A one-line, bounded, password-free reason for ``exc`` (gRPC code and details if any)."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    text: str
    if callable(code) and callable(details):
        try:
            c = code()
            d = details()
            text = f"{getattr(c, 'name', c)}: {d}" if d else str(getattr(c, "name", c))
        except Exception:
            text = type(exc).__name__
    else:
        msg = str(exc).strip()
        text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    text = " ".join(redact(text, credentials).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_scalar(rows: Any) -> Any:
    """The first value of a result, whatever the nesting (the connector's fetchone is [[v]])."""
    v = rows
    while isinstance(v, (list, tuple)) and v:
        v = v[0]
    return v


class DeadlineExceeded(Exception):
    """A call given to :func:`call_with_deadline` did not finish in time."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:g} s")
        self.seconds = seconds


def call_with_deadline(fn: Callable[[], T], timeout: float, name: str = "e6observe-call") -> T:
    """Run ``fn()`` on a daemon thread and return its result, or raise what it raised.

    The connector's blocking calls (``authenticate``, ``prepareStatement``...) take no deadline,
    so a hung server would hang the caller. After ``timeout`` seconds this raises
    :class:`DeadlineExceeded` and abandons the thread (daemon: it cannot keep the process alive);
    the caller should then close the connection it used, which cancels the RPC under it.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller, who decides
            box["error"] = exc
        finally:
            done.set()

    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    if not done.wait(timeout):
        raise DeadlineExceeded(timeout)
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]
