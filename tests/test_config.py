"""Options: keyword > E6OBSERVE_* environment > default, validated once, clear errors, no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from e6observe.config import ENV_OPTION_NAMES, OPTION_NAMES, ConfigError, Options

pytestmark = pytest.mark.matrix


def resolve(env: dict[str, str] | None = None, **kwargs: object) -> Options:
    return Options.resolve(kwargs, environ=env or {})


def test_defaults() -> None:
    o = resolve()
    assert (o.prometheus_port, o.prometheus_addr, o.registry) == (None, "127.0.0.1", None)
    assert (o.meter_provider, o.tracer_provider, o.logger_provider) == (None, None, None)
    assert o.otel is True and o.watcher_interval == 1.0 and o.event_capacity == 1024
    assert o.record_query_text is False and o.basic_auth is None and o.multiprocess_dir is None
    assert (o.tls_certfile, o.tls_keyfile, o.tls_client_cafile) == (None, None, None)
    assert set(o.sources.values()) == {"default"}


def test_keyword_beats_environment_beats_default() -> None:
    env = {
        "E6OBSERVE_PROMETHEUS_PORT": "9464",
        "E6OBSERVE_WATCHER_INTERVAL": "0.25",
        "E6OBSERVE_EVENT_CAPACITY": "50",
    }
    o = resolve(env, event_capacity=10)
    assert o.prometheus_port == 9464 and o.sources["prometheus_port"] == "env"
    assert o.watcher_interval == 0.25
    assert o.event_capacity == 10 and o.sources["event_capacity"] == "kwarg"
    assert o.prometheus_addr == "127.0.0.1" and o.sources["prometheus_addr"] == "default"


@pytest.mark.parametrize(
    "raw,value",
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_boolean_environment_values(raw: str, value: bool) -> None:
    assert resolve({"E6OBSERVE_OTEL": raw}).otel is value
    assert resolve({"E6OBSERVE_RECORD_QUERY_TEXT": raw}).record_query_text is value


def test_empty_environment_value_unsets_an_optional_option() -> None:
    assert resolve({"E6OBSERVE_PROMETHEUS_PORT": ""}).prometheus_port is None
    with pytest.raises(ConfigError, match="E6OBSERVE_WATCHER_INTERVAL"):
        resolve({"E6OBSERVE_WATCHER_INTERVAL": ""})


@pytest.mark.parametrize(
    "kwargs,env,needle",
    [
        ({"prometheus_port": 70000}, {}, "prometheus_port must be within 0..65535"),
        ({"prometheus_port": "9464"}, {}, "prometheus_port must be an integer, got '9464'"),
        ({"prometheus_port": True}, {}, "prometheus_port must be an integer"),
        (
            {},
            {"E6OBSERVE_PROMETHEUS_PORT": "http"},
            "E6OBSERVE_PROMETHEUS_PORT must be an integer, got 'http'",
        ),
        ({"watcher_interval": 0}, {}, "watcher_interval must be > 0"),
        ({"watcher_interval": float("nan")}, {}, "watcher_interval must be > 0"),
        ({}, {"E6OBSERVE_WATCHER_INTERVAL": "-1"}, "E6OBSERVE_WATCHER_INTERVAL must be > 0"),
        ({"event_capacity": 0}, {}, "event_capacity must be within 1.."),
        ({"event_capacity": 10**9}, {}, "event_capacity must be within 1.."),
        ({"otel": "yes"}, {}, "otel must be a boolean"),
        ({}, {"E6OBSERVE_OTEL": "maybe"}, "E6OBSERVE_OTEL must be a boolean"),
        ({"prometheus_addr": " "}, {}, "prometheus_addr must name an address"),
        ({"registry": REGISTRY.__class__}, {}, "registry must be a prometheus_client CollectorRegistry"),
        ({"tracer_provider": object()}, {}, "tracer_provider must be an OpenTelemetry provider"),
        ({"meter_provider": 3}, {}, "meter_provider must be an OpenTelemetry provider"),
        (
            {"multiprocess_dir": "/nonexistent/e6observe"},
            {},
            "multiprocess_dir must be an existing directory",
        ),
        ({}, {"PROMETHEUS_MULTIPROC_DIR": "/nonexistent/x"}, "PROMETHEUS_MULTIPROC_DIR must be an existing"),
    ],
)
def test_bad_values_name_the_option_and_the_value(
    kwargs: dict[str, object], env: dict[str, str], needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(env, **kwargs)
    assert needle in str(info.value)


def test_unknown_option_suggests_the_right_name() -> None:
    with pytest.raises(ConfigError, match="'prometheus_prot' \\(did you mean 'prometheus_port'\\?\\)"):
        resolve(prometheus_prot=1)


@pytest.mark.parametrize("value", ["nocolon", ":secret-pass", "scraper7:", "scr\naper:p4ss"])
def test_bad_basic_auth_is_rejected_without_echoing_it(value: str) -> None:
    for env, kwargs in (({}, {"basic_auth": value}), ({"E6OBSERVE_BASIC_AUTH": value}, {})):
        with pytest.raises(ConfigError) as info:
            resolve(env, **kwargs)
        msg = str(info.value)
        assert "basic_auth" in msg.lower() and "value not shown" in msg
        for part in value.split(":"):
            if part:
                assert part not in msg


def test_basic_auth_from_environment_never_in_repr_or_describe() -> None:
    o = resolve({"E6OBSERVE_BASIC_AUTH": "scraper:s3cr3t-P4ss"})
    assert o.basic_auth_credentials == ("scraper", "s3cr3t-P4ss")
    assert "s3cr3t" not in repr(o)
    assert "s3cr3t" not in str(o.describe())
    assert o.describe()["basic_auth"] == "***"


def test_tls_files(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem"))
    for p in (cert, key, ca):
        p.write_text("x")
    o = resolve(tls_certfile=str(cert), tls_keyfile=key, tls_client_cafile=str(ca))
    assert o.tls_enabled and o.tls_keyfile == str(key)
    with pytest.raises(ConfigError, match="tls_certfile is set but tls_keyfile is not"):
        resolve(tls_certfile=str(cert))
    with pytest.raises(ConfigError, match="tls_client_cafile .* needs tls_certfile"):
        resolve(tls_client_cafile=str(ca))
    with pytest.raises(ConfigError, match="E6OBSERVE_TLS_KEYFILE must be a readable file"):
        resolve({"E6OBSERVE_TLS_KEYFILE": str(tmp_path / "missing.pem")}, tls_certfile=str(cert))


def test_objects_are_kwargs_only_and_registry_is_never_the_global_by_default() -> None:
    reg = CollectorRegistry()
    o = resolve({"E6OBSERVE_REGISTRY": "x"}, registry=reg)
    assert o.registry is reg
    assert resolve({"E6OBSERVE_REGISTRY": "x"}).registry is None
    assert resolve(registry=REGISTRY).registry is REGISTRY  # only when passed explicitly
    assert "E6OBSERVE_REGISTRY" not in ENV_OPTION_NAMES


def test_multiprocess_dir_defaults_to_prometheus_variable(tmp_path: Path) -> None:
    o = resolve({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert o.multiprocess_dir == str(tmp_path)
    other = tmp_path / "mine"
    other.mkdir()
    o = resolve({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "E6OBSERVE_MULTIPROCESS_DIR": str(other)})
    assert o.multiprocess_dir == str(other)


def test_the_option_names_other_components_rely_on() -> None:
    assert set(OPTION_NAMES) == {
        "prometheus_port",
        "prometheus_addr",
        "registry",
        "meter_provider",
        "tracer_provider",
        "logger_provider",
        "otel",
        "watcher_interval",
        "event_capacity",
        "record_query_text",
        "query_spans",
        "tls_certfile",
        "tls_keyfile",
        "tls_client_cafile",
        "basic_auth",
        "multiprocess_dir",
        "runtime_metrics",
        "http_max_head_bytes",
        "http_head_timeout",
        "http_write_timeout",
        "prometheus_low_cardinality",
    }
