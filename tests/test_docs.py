"""The documentation stays true: generated parts current, options and flags documented, links valid.

- ``docs/metrics.md`` is exactly what ``scripts/metrics_doc.py`` writes from the metric table,
  and what it says about the exporters holds for a real instrumented application (Prometheus
  families and labels, OpenTelemetry names and attribute keys);
- every option of ``instrument()`` is in ``docs/configuration.md`` with its default and its
  environment variable, and every flag of every ``e6observe`` subcommand in that command's
  section (and no flag that does not exist);
- every relative link in ``README.md`` and ``docs/*.md`` points to an existing file (and an
  existing heading, for ``#anchors`` into Markdown); README's layout table names existing paths
  and its documentation index lists every file in ``docs/``.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest
from helpers import PASSWORD, USER

from e6observe import metrics as M
from e6observe.config import ENV_OPTION_NAMES, ENV_PREFIX, OPTION_NAMES, Options

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
README = ROOT / "README.md"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("metrics_doc", ROOT / "scripts" / "metrics_doc.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _load_generator()


# -- Markdown helpers ---------------------------------------------------------------------------
_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
_LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks (links and headings there are not real)."""
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"<[^>]+>", "", heading).replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    out: set[str] = set()
    seen: dict[str, int] = {}
    for _level, title in _HEADING.findall(_prose(text)):
        s = slug(title)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def section(text: str, title: str) -> str:
    """The body of the heading ``title`` (exact heading text), up to the next heading of the same
    or a higher level."""
    prose = _prose(text)
    for m in _HEADING.finditer(prose):
        if m.group(2) == title:
            level = len(m.group(1))
            rest = prose[m.end() :]
            for n in _HEADING.finditer(rest):
                if len(n.group(1)) <= level:
                    return rest[: n.start()]
            return rest
    raise AssertionError(f"no heading {title!r}")


def table_rows(body: str) -> list[list[str]]:
    """The cells of the rows of the first Markdown table in ``body`` (header and rule left out)."""
    lines: list[str] = []
    for line in body.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]] for line in lines[2:]]


# -- docs/metrics.md ----------------------------------------------------------------------------
def test_the_metric_reference_is_generated_from_the_table(gen: ModuleType) -> None:
    committed = (DOCS / "metrics.md").read_text(encoding="utf-8")
    assert committed == gen.render(), (
        "docs/metrics.md is out of date with e6observe/metrics.py: run ./run regen "
        "(or scripts/regen-docs) and commit the result"
    )


def test_every_metric_has_its_own_entry() -> None:
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    for m in M.ALL:
        heading = m.exposed_names[0] if m.kind == "counter" else m.prom_name
        assert f"### `{heading}`" in text, m.prom_name
        assert m.help in text


def test_the_sink_label_values_are_every_value_the_code_counts(gen: ModuleType) -> None:
    # e6observe_events_dropped_total{sink} is incremented with string literals in several modules.
    found: set[str] = set()
    pattern = re.compile(r"EVENTS_DROPPED(?:\)|\.prom_name\])\.counter\(\s*\"([A-Za-z0-9_]+)\"")
    for path in (ROOT / "e6observe").rglob("*.py"):
        found.update(pattern.findall(path.read_text(encoding="utf-8")))
    assert found == set(gen.labels()["sink"].values)


@pytest.fixture
def instrumented_app(sim: Any) -> Iterator[tuple[str, Any]]:
    """An application instrumented with e6observe and an SDK meter provider: queries on both
    colours, a failed query, an announced and an abrupt switch, a connection pool in use.
    Yields (the /metrics exposition, the OpenTelemetry metrics data)."""
    from e6data_python_connector import e6data_grpc
    from e6data_python_connector.connection_pool import ConnectionPool
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from e6observe import _api

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    _api.instrument(
        prometheus_port=0, prometheus_addr="127.0.0.1", meter_provider=provider, watcher_interval=0.05
    )
    conn = pool = None
    try:
        conn = e6data_grpc.Connection(host=sim.host, port=sim.port, username=USER, password=PASSWORD)

        def query(sql: str = "SELECT 1") -> None:
            cur = conn.cursor()
            try:
                cur.execute(sql)
                cur.fetchall()
            except Exception:
                pass
            finally:
                try:
                    cur.clear()
                except Exception:
                    pass

        for _ in range(2):
            query()
        query("SELECT fail()")
        sim.flip()
        query()
        sim.flip(announce=False)
        query()
        query()
        pool = ConnectionPool(
            host=sim.host,
            port=sim.port,
            username=USER,
            password=PASSWORD,
            min_size=1,
            max_size=2,
            max_overflow=0,
        )
        pool.return_connection(pool.get_connection())
        inst = _api._active
        assert inst is not None
        sink = next(obj for name, obj, _ in inst.sinks if name == "sink.prometheus")
        with urllib.request.urlopen(sink.server.url + "/metrics", timeout=10) as r:
            exposition = r.read().decode("utf-8")
        yield exposition, reader.get_metrics_data()
    finally:
        if pool is not None:
            pool.close_all()
        if conn is not None:
            conn.close()
        _api.uninstrument()
        provider.shutdown()


def test_the_exporters_do_what_the_reference_says(gen: ModuleType, instrumented_app: tuple[str, Any]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    exposition, otel_data = instrumented_app
    app_metrics = [m for m in M.ALL if gen.group_of(m) != "prober"]

    # Prometheus: exactly the documented families, with the documented type and labels.
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    table = {m.prom_name: m for m in M.ALL}
    assert set(families) <= set(table), "families on /metrics that the table does not have"
    for m in app_metrics:
        if not gen.prometheus_exported(m):
            assert m.prom_name not in families, (
                f"{m.prom_name} is on /metrics now: drop it from NOT_ON_PROMETHEUS in "
                "scripts/metrics_doc.py and regenerate"
            )
            continue
        assert m.prom_name in families, f"{m.prom_name} is documented but not on /metrics"
        fam = families[m.prom_name]
        assert fam.type == m.kind, m.prom_name
        seen = {k for s in fam.samples for k in s.labels if k != "le"}
        if fam.samples:
            assert seen == set(m.labels), m.prom_name
    for name in families:
        assert gen.group_of(table[name]) != "prober", f"{name}: the prober's, on an app's /metrics"

    # OpenTelemetry: only documented instruments, with documented attribute keys.
    by_otel = {m.otel_name: m for m in M.ALL if m.otel_name}
    emitted: dict[str, set[str]] = {}
    for rm in otel_data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                keys = emitted.setdefault(metric.name, set())
                for point in metric.data.data_points:
                    keys.update(point.attributes)
    assert emitted, "no OpenTelemetry metrics at all"
    for name, keys in emitted.items():
        assert name in by_otel, f"{name} is exported but not in the table"
        m = by_otel[name]
        assert gen.otel_exported(m), f"{name} is exported, but the reference says it is not"
        assert keys <= set(gen.otel_attributes(m)), (name, sorted(keys))
    # The attribute names of the conventions-based instruments, seen with data.
    for m in (
        M.POOL_CONNECTIONS,
        M.GC_COLLECTIONS,
        M.PROCESS_CPU,
        M.RPC_DURATION,
        M.QUERY_DURATION,
        M.SWITCHES,
    ):
        assert m.otel_name in emitted, m.otel_name
        assert set(m.otel_labels or m.labels) <= emitted[m.otel_name], m.otel_name


# -- docs/configuration.md ----------------------------------------------------------------------
def _configuration() -> str:
    return CONFIGURATION.read_text(encoding="utf-8")


def _options_table() -> dict[str, list[str]]:
    rows = table_rows(section(_configuration(), "Options at a glance"))
    return {r[0].strip("`"): r for r in rows}


def test_every_option_is_in_the_options_table_with_its_default_and_variable() -> None:
    rows = _options_table()
    assert set(rows) == set(OPTION_NAMES)
    defaults = Options()
    for name, cells in rows.items():
        _name, _type, default, env = cells[:4]
        first = re.match(r"`([^`]*)`", default)
        assert first is not None, (name, default)
        assert first.group(1) == str(getattr(defaults, name)), (name, default)
        variable = ENV_PREFIX + name.upper()
        if variable in ENV_OPTION_NAMES:
            assert env == f"`{variable}`", (name, env)
        else:
            assert env == "—", (name, env)


def test_every_option_has_its_own_section() -> None:
    text = _configuration()
    for name in OPTION_NAMES:
        body = section(text, f"`{name}`")
        assert body.strip(), name
        variable = ENV_PREFIX + name.upper()
        if variable in ENV_OPTION_NAMES:
            assert variable in body, name


def test_no_environment_variable_is_documented_that_does_not_exist() -> None:
    text = _configuration()
    others = {"E6OBSERVE_URL"}  # e6observe status/tail, not an instrument() option
    mentioned = set(re.findall(r"\bE6OBSERVE_[A-Z_]+[A-Z]\b", text))
    assert mentioned <= set(ENV_OPTION_NAMES) | others, sorted(mentioned - set(ENV_OPTION_NAMES))


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from e6observe.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_flag_of_every_command_is_documented_in_its_section() -> None:
    text = _configuration()
    commands = _subcommands()
    assert set(commands) == {"demo", "sim", "probe", "check", "status", "tail", "export"}
    for name, parser in commands.items():
        body = section(text, f"`e6observe {name}`")
        flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
        missing = sorted(f for f in flags if not re.search(re.escape(f) + r"(?![\w-])", body))
        assert not missing, f"e6observe {name}: undocumented flags {missing}"
        documented = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", body))
        assert documented <= flags, (
            f"e6observe {name}: documented flags that do not exist {sorted(documented - flags)}"
        )


# -- links, layout, index -----------------------------------------------------------------------
def _markdown_files() -> list[Path]:
    return [README] + sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path: Path) -> None:
    # README links BENCHMARKS.md, which is written separately; until it exists this fails.
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in _LINK.findall(_prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no such file)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text("utf-8")):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{path.relative_to(ROOT)}: " + ", ".join(broken)


def test_the_layout_table_names_existing_paths() -> None:
    rows = table_rows(section(README.read_text(encoding="utf-8"), "Layout"))
    assert rows
    for cells in rows:
        rel = cells[0].strip("`")
        assert (ROOT / rel).exists(), rel


def test_the_documentation_index_lists_every_document() -> None:
    index = section(README.read_text(encoding="utf-8"), "Documentation")
    linked = {t.partition("#")[0] for t in _LINK.findall(index)}
    assert linked == {f"docs/{p.name}" for p in DOCS.glob("*.md")}
