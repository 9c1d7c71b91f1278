"""Secret masking in command output (``e6observe check`` / ``probe``): the password is hidden as
one fixed mask where it stands as a value, and ordinary words are never rewritten.

Before, the password was replaced as a bare substring: ``E6DATA_PASSWORD=p`` turned "ipv4" into
"i***v4" and ``e`` turned "failed to connect" into "fail***d to conn***ct".
"""

from __future__ import annotations

import os
import string
import subprocess
import sys

import pytest

from e6observe.cli._connopts import MASK, Credentials, describe_error, redact

#: Messages the connector, gRPC and the simulator really produce on the commands' paths.
MESSAGES = [
    "UNAVAILABLE: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
    "Failed to connect to remote host: Connection refused",
    "UNAVAILABLE: DNS resolution failed for nohost.invalid:80: C-ares status is not ARES_SUCCESS "
    "qtype=A name=nohost.invalid is_balancer=0: Domain name not found",
    "DEADLINE_EXCEEDED: Deadline Exceeded",
    "INTERNAL: status: 456 - strategy mismatch (sent blue, active green)",
    "UNAUTHENTICATED: Access denied",
    "timed out after 5 s",
    "ConnectionError: query 6f1c0e2a-41b7-4c5e-9d38-0b7f5e1a2c4d failed on 10.0.0.12:9000",
]
#: Passwords that are also ordinary words of those messages.
COMMON_WORDS = [
    "connect",
    "failed",
    "error",
    "remote",
    "host",
    "addresses",
    "Connection",
    "status",
    "strategy",
    "mismatch",
    "Access",
    "denied",
    "query",
    "the",
    "to",
    "all",
]
CANARIES = ["CANARY-pw-3b9d51", "s3cr3t!x", "hunter2", "Zq9#k2$w1"]


@pytest.mark.parametrize("password", list(string.ascii_letters + string.digits + "-_.:"))
def test_one_letter_passwords_leave_every_message_alone(password: str) -> None:
    creds = Credentials("me", password)
    for msg in MESSAGES:
        assert redact(msg, creds) == msg


@pytest.mark.parametrize("password", COMMON_WORDS)
def test_common_word_passwords_leave_every_message_alone(password: str) -> None:
    creds = Credentials("me", password)
    for msg in MESSAGES:
        assert redact(msg, creds) == msg


@pytest.mark.parametrize("password", CANARIES)
def test_canary_passwords_are_hidden_wherever_a_server_echoes_them(password: str) -> None:
    creds = Credentials("me", password)
    echoes = [
        f"UNAUTHENTICATED: user me password {password} refused",
        f"bad credentials '{password}'",
        f'{{"user": "me", "password": "{password}"}}',
        f"connect grpc://me:{password}@cluster:443 failed",
        f"login(me, {password}): denied",
        password,
    ]
    for msg in echoes:
        out = redact(msg, creds)
        assert password not in out, out
        assert MASK in out
    # and the surrounding words are intact
    assert redact(f"user me password {password} refused", creds) == f"user me password {MASK} refused"
    assert redact(f"me:{password}@cluster", creds) == f"me:{MASK}@cluster"


@pytest.mark.parametrize("password", ["p", "e", "to", "connect"])
def test_a_short_or_word_password_is_one_fixed_mask_where_it_is_a_whole_value(password: str) -> None:
    creds = Credentials("me", password)
    assert redact(f"password={password}", creds) == f"password={MASK}"
    assert redact(f"login failed: password: {password}", creds) == f"login failed: password: {MASK}"
    assert redact(f'{{"password": "{password}"}}', creds) == f'{{"password": "{MASK}"}}'
    assert redact(f"bad password '{password}' for me", creds) == f"bad password '{MASK}' for me"
    assert redact(password, creds) == MASK
    # the mask is fixed: its length says nothing about the password's
    assert redact("password=" + password * 5, creds) == f"password={MASK}"


def test_known_secret_fields_are_masked_whatever_the_password() -> None:
    creds = Credentials("me", "hunter2")
    assert redact("token=abc.def password=other", creds) == f"token={MASK} password={MASK}"
    assert redact("access_token: eyJhbGciOi", None) == f"access_token: {MASK}"
    assert (
        describe_error(RuntimeError("password=zz9 rejected"), creds)
        == f"RuntimeError: password={MASK} rejected"
    )


@pytest.mark.parametrize("password", ["p", "e", "1"])
def test_check_output_keeps_the_grpc_message_readable(password: str) -> None:
    """The issue's reproduction: ``e6observe check --host 127.0.0.1 --port 1``."""
    env = dict(os.environ, E6DATA_USERNAME="me", E6DATA_PASSWORD=password)
    r = subprocess.run(
        [sys.executable, "-m", "e6observe", "check", "--host", "127.0.0.1", "--port", "1", "--timeout", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 1, r.stderr
    assert "ipv4:127.0.0.1:1" in r.stdout
    assert "failed to connect to all addresses" in r.stdout
    assert "Connection refused" in r.stdout
    assert MASK not in r.stdout
