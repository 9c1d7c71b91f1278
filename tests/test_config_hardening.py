"""No silent weakening (issue 12, 5 and 7): blank security values, shortened addresses and
non-ASCII integers are configuration errors naming the option and where it came from; the
endpoint's limits are options; a non-loopback bind without protection logs one warning."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attacks
import pytest
from prometheus_client import CollectorRegistry

from e6observe.config import ConfigError, Options
from e6observe.endpoint.server import MetricsServer

SECRET = "canary-Pa55w0rd-blank"


def resolve(env: dict[str, str] | None = None, **kw: Any) -> Options:
    return Options.resolve(kw, environ=env or {})


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("cert", "key", "ca"):
        p = tmp_path / f"{name}.pem"
        p.write_text("x")
        files[name] = str(p)
    return files


@pytest.mark.parametrize("value", ["\n", " \t", "  ", "\r\n"])
def test_blank_basic_auth_from_the_environment_is_an_error_not_auth_off(value: str) -> None:
    with pytest.raises(ConfigError, match="E6OBSERVE_BASIC_AUTH is blank") as err:
        resolve({"E6OBSERVE_BASIC_AUTH": value})
    assert "value not shown" in str(err.value)


@pytest.mark.parametrize("value", [" \t", " : ", "user: ", " :pw", "\t:\t"])
def test_blank_basic_auth_keyword_or_blank_parts_are_errors(value: str) -> None:
    with pytest.raises(ConfigError, match="^basic_auth must have the form user:password"):
        resolve(basic_auth=value)
    with pytest.raises(ConfigError, match="^E6OBSERVE_BASIC_AUTH "):
        resolve({"E6OBSERVE_BASIC_AUTH": value})


def test_the_empty_string_still_means_unset() -> None:
    assert resolve({"E6OBSERVE_BASIC_AUTH": ""}).basic_auth is None
    assert resolve({"E6OBSERVE_TLS_CLIENT_CAFILE": ""}).tls_client_cafile is None


@pytest.mark.parametrize("name", ["TLS_CLIENT_CAFILE", "TLS_CERTFILE", "TLS_KEYFILE"])
def test_a_blank_tls_path_from_the_environment_is_an_error(tls_files: dict[str, str], name: str) -> None:
    env = {
        "E6OBSERVE_TLS_CERTFILE": tls_files["cert"],
        "E6OBSERVE_TLS_KEYFILE": tls_files["key"],
        "E6OBSERVE_TLS_CLIENT_CAFILE": tls_files["ca"],
    }
    env[f"E6OBSERVE_{name}"] = " "
    with pytest.raises(ConfigError, match=f"E6OBSERVE_{name} is blank"):
        resolve(env)


def test_a_blank_tls_path_keyword_is_an_error(tls_files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="^tls_client_cafile is blank"):
        resolve(tls_certfile=tls_files["cert"], tls_keyfile=tls_files["key"], tls_client_cafile=" ")


def test_tls_pairing_messages_name_the_variable_the_value_came_from(tls_files: dict[str, str]) -> None:
    with pytest.raises(
        ConfigError, match="^E6OBSERVE_TLS_CERTFILE is set but tls_keyfile is not .*E6OBSERVE_TLS_KEYFILE"
    ):
        resolve({"E6OBSERVE_TLS_CERTFILE": tls_files["cert"]})
    with pytest.raises(ConfigError, match="^tls_keyfile is set but tls_certfile is not"):
        resolve(tls_keyfile=tls_files["key"])
    with pytest.raises(ConfigError, match="^E6OBSERVE_TLS_CLIENT_CAFILE .* needs tls_certfile"):
        resolve({"E6OBSERVE_TLS_CLIENT_CAFILE": tls_files["ca"]})


@pytest.mark.parametrize("addr", ["0", "127.1", "0x7f.1", "2130706433", "0x7f000001", "10.1"])
def test_shortened_ipv4_addresses_are_refused(addr: str) -> None:
    with pytest.raises(ConfigError, match="^E6OBSERVE_PROMETHEUS_ADDR must be a full IP address"):
        resolve({"E6OBSERVE_PROMETHEUS_ADDR": addr})
    with pytest.raises(ConfigError, match="^prometheus_addr must be a full IP address"):
        resolve(prometheus_addr=addr)


@pytest.mark.parametrize(
    "addr",
    ["0.0.0.0", "::", "::1", "127.0.0.1", "localhost", "my-app.default.svc.cluster.local", "fe80::1%eth0"],
)
def test_real_addresses_and_host_names_are_accepted(addr: str) -> None:
    assert resolve(prometheus_addr=addr).prometheus_addr == addr


@pytest.mark.parametrize("addr", ["127.0.0.1 ", "a b", "host/x", "-bad"])
def test_garbage_addresses_are_refused(addr: str) -> None:
    with pytest.raises(ConfigError, match="prometheus_addr must be"):
        resolve(prometheus_addr=addr)


@pytest.mark.parametrize(
    "value", ["1_000", "\u0661\u0662\u0663", "\uff11\uff12\uff13", "1 000", "0x10", "\u0967\u0968"]
)
@pytest.mark.parametrize("name", ["PROMETHEUS_PORT", "EVENT_CAPACITY", "HTTP_MAX_HEAD_BYTES"])
def test_integers_are_ascii_digits_only(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^E6OBSERVE_{name} must be an integer"):
        resolve({f"E6OBSERVE_{name}": value})


@pytest.mark.parametrize("value", ["1_0", "\u0661", "\uff11.5", "\u0661e1"])
def test_numbers_are_ascii_only(value: str) -> None:
    with pytest.raises(ConfigError, match="^E6OBSERVE_WATCHER_INTERVAL must be a number"):
        resolve({"E6OBSERVE_WATCHER_INTERVAL": value})


def test_ascii_integers_and_numbers_still_parse() -> None:
    o = resolve(
        {
            "E6OBSERVE_PROMETHEUS_PORT": " 9464 ",
            "E6OBSERVE_WATCHER_INTERVAL": "0.5",
            "E6OBSERVE_HTTP_MAX_HEAD_BYTES": "+8192",
            "E6OBSERVE_HTTP_HEAD_TIMEOUT": "2.5e0",
        }
    )
    assert (o.prometheus_port, o.watcher_interval, o.http_max_head_bytes, o.http_head_timeout) == (
        9464,
        0.5,
        8192,
        2.5,
    )


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"http_max_head_bytes": 100}, "http_max_head_bytes must be within 1024..1048576"),
        ({"http_max_head_bytes": 2 << 20}, "http_max_head_bytes must be within"),
        ({"http_head_timeout": 0}, "http_head_timeout must be > 0"),
        ({"http_head_timeout": float("inf")}, "http_head_timeout must be > 0"),
        ({"http_write_timeout": -1.0}, "http_write_timeout must be > 0"),
    ],
)
def test_endpoint_limits_are_checked(kw: dict[str, Any], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        resolve(**kw)


def test_endpoint_limits_reach_the_server() -> None:
    import e6observe
    from e6observe import _api

    e6observe.instrument(prometheus_port=0, otel=False, http_max_head_bytes=2048)
    try:
        inst = _api._active
        assert inst is not None
        srv = next(o.server for c, o, _ in inst.sinks if c == "sink.prometheus")
        assert srv.max_head_bytes == 2048
        code, _ = attacks.http_get(srv.port, "/metrics")
        assert code == 200
        import socket

        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
            assert s.recv(12) == b"HTTP/1.0 431"
    finally:
        e6observe.uninstrument()


def test_an_unprotected_non_loopback_endpoint_logs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    srv = MetricsServer(CollectorRegistry(), addr="127.0.0.1", port=0)
    with caplog.at_level(logging.WARNING, logger="e6observe"):
        srv._warn_exposure("127.0.0.1", tls=False)
        srv._warn_exposure("::1", tls=False)
        assert not caplog.records
        srv._warn_exposure("0.0.0.0", tls=False)
    assert len(caplog.records) == 1
    assert "neither TLS nor basic auth" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="e6observe"):
        srv._warn_exposure("10.1.2.3", tls=True)  # TLS (with or without a client CA): fine
    assert not caplog.records
    authed = MetricsServer(CollectorRegistry(), port=0, basic_auth=f"u:{SECRET}")
    with caplog.at_level(logging.WARNING, logger="e6observe"):
        authed._warn_exposure("0.0.0.0", tls=False)
    assert len(caplog.records) == 1 and "clear text" in caplog.records[0].getMessage()
    assert SECRET not in caplog.text


def test_a_loopback_endpoint_starts_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="e6observe"):
        srv = MetricsServer(CollectorRegistry(), port=0).start()
        srv.close()
    assert not caplog.records
