"""``e6observe export DIR``: the Grafana dashboards, alert rules and their promtool tests.

Writes, from the copies shipped inside the package (``e6observe/mixin/``)::

    DIR/dashboards/e6data-blue-green-overview.json, e6data-client-runtime.json
    DIR/rules/e6observe.rules.yaml
    DIR/rules/e6observe.records.yaml            (the recording rules the dashboards read)
    DIR/rules/tests/e6observe.rules.test.yaml   (promtool test rules; default settings only)
    DIR/docs/runbook.md, DIR/docs/alerts.md     (what the alerts' runbook_url points into)

With the defaults the files are byte-equal to the shipped ones. The options are the settings a
kube-prometheus-stack user changes: ``--selector`` (which targets count, e.g. a job),
``--cluster-label`` / ``--namespace-label`` (label names, in every alert aggregation and the
dashboards' variables), ``--runbook-url`` and ``--set FIELD=VALUE`` for any threshold, window
or ``for`` duration (``--list-settings``). Rules are then regenerated from the metric table by
the shipped generator (needs PyYAML: ``pip install 'e6observe[export]'``); the dashboards'
label names and variable queries are rewritten. The promtool tests encode the default
thresholds and labels, so they are written only when the rules equal the shipped ones.

Files are written through a temporary file and renamed into place; an existing file that
differs is replaced only with ``--force``, and a symbolic link is never written through.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

from .._files import write_atomic

DASHBOARDS = ("e6data-blue-green-overview.json", "e6data-client-runtime.json")
RULES = "e6observe.rules.yaml"
RECORDS = "e6observe.records.yaml"
RULE_TESTS = "e6observe.rules.test.yaml"
DOCS = ("runbook.md", "alerts.md")
#: Largest file the export writes (the shipped ones are well under this).
MAX_FILE_BYTES = 4 * 1024 * 1024


class ExportError(Exception):
    """A bad option or an unwritable target: one line, exit 2."""


def shipped(*parts: str) -> bytes:
    """A file shipped under ``e6observe/mixin/files/``."""
    node = resources.files("e6observe.mixin").joinpath("files")
    for p in parts:
        node = node.joinpath(p)
    return node.read_bytes()


# -- settings -----------------------------------------------------------------------------------
def _settable() -> dict[str, Any]:
    from ..mixin.config import Config

    return {
        f.name: f
        for f in fields(Config)
        if f.name not in ("selector", "cluster_label", "namespace_label", "runbook_url")
    }


def _parse_setting(text: str) -> tuple[str, Any]:
    from ..mixin.config import DEFAULT

    name, sep, raw = text.partition("=")
    name = name.strip()
    settable = _settable()
    if not sep or name not in settable:
        raise ExportError(f"--set takes FIELD=VALUE with FIELD one of: {', '.join(settable)} (got {text!r})")
    default = getattr(DEFAULT, name)
    try:
        if isinstance(default, tuple):
            return name, tuple(x.strip() for x in raw.split(",") if x.strip())
        if isinstance(default, bool):
            raise ValueError
        if isinstance(default, int):
            return name, int(raw)
        if isinstance(default, float):
            return name, float(raw)
    except ValueError:
        raise ExportError(f"--set {name}: not a {type(default).__name__}: {raw!r}") from None
    return name, raw.strip()


def config_from(args: argparse.Namespace) -> Any:
    """The mixin ``Config`` the options describe (validated by Config itself)."""
    from ..mixin.config import DEFAULT, ConfigError

    changes: dict[str, Any] = dict(_parse_setting(s) for s in (args.set or ()))
    changes.update(
        selector=args.selector, cluster_label=args.cluster_label, namespace_label=args.namespace_label
    )
    if args.runbook_url is not None:
        changes["runbook_url"] = args.runbook_url.rstrip("#")
    try:
        return DEFAULT.with_(**changes)
    except (ConfigError, TypeError) as exc:
        raise ExportError(str(exc)) from None


# -- dashboards ----------------------------------------------------------------------------------
def _label_pattern(label: str) -> re.Pattern[str]:
    # A label name where PromQL uses one: in a matcher (followed by an operator) or a grouping
    # / label_values argument (followed by "," or ")"); never a $variable, a metric name or a
    # string's content.
    return re.compile(r'(?<![\w$."])' + re.escape(label) + r"(?=\s*(?:=~|!~|!=|=(?!=)|,|\)))")


def _walk_queries(node: Any, fix: Callable[[str, str], str], key: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _walk_queries(v, fix, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk_queries(v, fix, key) for v in node]
    if isinstance(node, str) and key in ("expr", "query", "definition"):
        return fix(node, key)
    return node


def rewrite_dashboard(text: str, cfg: Any) -> str:
    """A shipped dashboard with ``cfg``'s cluster/namespace label names and selector."""
    from ..mixin.config import DEFAULT

    renames = [
        (_label_pattern(old), new)
        for old, new in (
            (DEFAULT.cluster_label, cfg.cluster_label),
            (DEFAULT.namespace_label, cfg.namespace_label),
        )
        if old != new
    ]
    build_info = re.compile(r"\be6observe_build_info(\{)?")

    def fix(expr: str, key: str) -> str:
        for pattern, new in renames:
            expr = pattern.sub(new, expr)
        if cfg.selector and key in ("query", "definition") and expr.startswith("label_values("):
            # The variables list only e6observe targets the selector admits (as the generator
            # does with Config.selector).
            expr = build_info.sub(
                lambda m: "e6observe_build_info{" + cfg.selector + (", " if m.group(1) else "}"), expr
            )
        return expr

    data = json.loads(text)
    data["templating"] = _walk_queries(data.get("templating", {}), fix)
    data["panels"] = _walk_queries(data.get("panels", []), fix)
    data["annotations"] = _walk_queries(data.get("annotations", {}), fix)
    for var in data["templating"].get("list", []):
        if var.get("name") in ("cluster", "namespace"):
            var["label"] = (
                (cfg.cluster_label if var["name"] == "cluster" else cfg.namespace_label)
                .replace("_", " ")
                .capitalize()
            )
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# -- writing -------------------------------------------------------------------------------------
def _write(path: Path, data: bytes, force: bool) -> str:
    """Write ``data`` to ``path`` atomically; returns "wrote", "unchanged" or raises."""
    if len(data) > MAX_FILE_BYTES:  # pragma: no cover - the shipped files are small
        raise ExportError(f"{path}: refusing to write {len(data)} bytes")
    if path.is_symlink():
        raise ExportError(f"{path} is a symbolic link; not writing through it")
    if path.exists():
        if not path.is_file():
            raise ExportError(f"{path} exists and is not a regular file")
        if path.read_bytes() == data:
            return "unchanged"
        if not force:
            raise ExportError(f"{path} exists and differs; use --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(path), data, "." + path.name + ".")
    return "wrote"


def files_for(cfg: Any) -> tuple[dict[str, bytes], list[str]]:
    """``{relative path: content}`` to write for ``cfg``, and notes for the user."""
    from ..mixin.config import DEFAULT

    notes: list[str] = []
    out: dict[str, bytes] = {}
    relabel = (cfg.cluster_label, cfg.namespace_label, cfg.selector) != (
        DEFAULT.cluster_label,
        DEFAULT.namespace_label,
        DEFAULT.selector,
    )
    for name in DASHBOARDS:
        raw = shipped("dashboards", name)
        out[f"dashboards/{name}"] = (
            rewrite_dashboard(raw.decode("utf-8"), cfg).encode("utf-8") if relabel else raw
        )
    rules = shipped("rules", RULES)
    if cfg != DEFAULT:
        try:
            from ..mixin import alerts
        except ImportError as exc:  # PyYAML
            raise ExportError(
                f"settings other than the defaults need PyYAML ({exc}): pip install 'e6observe[export]'"
            ) from None
        rules = alerts.render_rules(cfg).encode("utf-8")
    out[f"rules/{RULES}"] = rules
    records = shipped("rules", RECORDS)
    if cfg != DEFAULT:
        from ..mixin.records import render_records

        records = render_records(cfg).encode("utf-8")
    out[f"rules/{RECORDS}"] = records
    if rules == shipped("rules", RULES):
        out[f"rules/tests/{RULE_TESTS}"] = shipped("rules", "tests", RULE_TESTS)
    else:
        notes.append(
            f"rules/tests/{RULE_TESTS} not written: its cases encode the default "
            "thresholds and labels (export without options to get them)"
        )
    for name in DOCS:
        out[f"docs/{name}"] = shipped("docs", name)
    return out, notes


# -- command -------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = (
        "Write the Grafana dashboards (DIR/dashboards/*.json), the Prometheus alert rules "
        "(DIR/rules/e6observe.rules.yaml), their promtool tests (DIR/rules/tests/) and the "
        "runbook (DIR/docs/) from the copies shipped in this package.\n\n"
        "  promtool check rules DIR/rules/e6observe.rules.yaml\n"
        "  promtool test rules DIR/rules/tests/e6observe.rules.test.yaml"
    )
    p.add_argument("dir", metavar="DIR", help="directory to write into (created if missing)")
    p.add_argument(
        "--selector",
        default="",
        metavar="MATCHERS",
        help="label matchers, without braces, that every alert and the dashboards' "
        "variables are restricted to, e.g. 'job=~\"orders|billing\"' "
        "(default: every target exporting e6observe metrics)",
    )
    p.add_argument(
        "--cluster-label",
        default="cluster",
        metavar="NAME",
        help="the label naming the Kubernetes cluster, kept in every alert "
        "aggregation and a dashboard variable (default: cluster)",
    )
    p.add_argument(
        "--namespace-label",
        default="namespace",
        metavar="NAME",
        help="the namespace label (default: namespace)",
    )
    p.add_argument(
        "--runbook-url",
        default=None,
        metavar="URL",
        help="where DIR/docs/runbook.md will be published; each alert's runbook_url "
        "is URL#<alert name in lower case>",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="change one threshold, window or for duration, e.g. "
        "--set latency_threshold_seconds=2 --set latency_for=5m "
        "(repeatable; --list-settings names them)",
    )
    p.add_argument(
        "--list-settings", action="store_true", help="print every FIELD for --set with its default, and exit"
    )
    p.add_argument(
        "--force", action="store_true", help="replace existing files that differ (default: refuse)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.list_settings:
            from ..mixin.config import DEFAULT

            for name in _settable():
                print(f"{name} = {getattr(DEFAULT, name)!r}")
            return 0
        cfg = config_from(args)
        out, notes = files_for(cfg)
        root = Path(args.dir)
        if not args.force:  # refuse before writing anything, not half-way through
            for rel, data in out.items():
                path = root / rel
                if path.is_symlink() or (path.exists() and (not path.is_file() or path.read_bytes() != data)):
                    _write(path, data, False)  # raises with the reason
        for rel, data in out.items():
            state = _write(root / rel, data, args.force)
            print(f"{state:9} {root / rel}")
        for n in notes:
            print("note: " + n)
        return 0
    except ExportError as exc:
        print(f"e6observe export: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"e6observe export: error: {exc}", file=sys.stderr)
        return 2


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="e6observe export")
    add_arguments(p)
    return run(p.parse_args(argv))


__all__ = ["run", "add_arguments", "files_for", "rewrite_dashboard", "config_from", "shipped"]
