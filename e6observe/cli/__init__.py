"""The ``e6observe`` command. Each subcommand lives in its own module, imported on use.

A command module provides ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Optional, Sequence

from .._version import __version__

#: subcommand -> (module, one-line help)
COMMANDS = {
    "demo": ("e6observe.cli.demo", "run the simulator, an instrumented workload and a live view"),
    "sim": ("e6observe.cli.sim", "serve the blue/green e6data cluster simulator"),
    "probe": ("e6observe.cli.probe", "standalone prober: query a cluster on an interval, export metrics"),
    "check": ("e6observe.cli.check", "readiness check of a cluster: READY / NOT READY"),
    "status": ("e6observe.cli.remote", "print the current strategy state of an e6observe endpoint"),
    "tail": ("e6observe.cli.remote", "print switch events from an e6observe endpoint as they happen"),
    "export": ("e6observe.cli.export", "write the Grafana dashboards, alert rules and promtool tests"),
}


class OneLineParser(argparse.ArgumentParser):
    """Every usage error is one line, ``<prog>: error: <message>``, exit status 2 (argparse
    would print its usage block first)."""

    def error(self, message: str) -> Any:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.stderr.flush()
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="e6observe",
        description="Blue/green observability for the e6data Python connector: a demo, a cluster "
        "simulator, a standalone prober, a readiness check and endpoint readers.",
    )
    parser.add_argument("--version", action="version", version=f"e6observe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        adder = getattr(mod, "add_arguments_" + name, None) or mod.add_arguments
        adder(p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # an unknown option of a subcommand: its error, not the top level's usage
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = subparsers.choices.get(args.command or "", parser)
        command.error("unrecognized arguments: " + " ".join(extra))
    if not args.command:
        parser.print_help()
        return 2
    mod = importlib.import_module(COMMANDS[args.command][0])
    runner = getattr(mod, "run_" + args.command, None) or mod.run
    from ..config import ConfigError

    try:
        return int(runner(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:  # a bad E6OBSERVE_* variable: one line, like a bad flag
        print(f"e6observe {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
