"""``e6observe sim``: serve the blue/green cluster simulator until SIGINT/SIGTERM.

On start it prints one line naming the address; when stopped it prints its counters as one JSON
object on the last line of stdout. A bad flag or an address it cannot bind is one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any, List, Optional, Sequence, Tuple

from . import _argtypes as A

PROG = "e6observe sim"


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` report any usage error as a single line on stderr, exit status 2.

    argparse prints a usage block before the error, and unknown options of a subcommand are
    reported by the top-level parser; both are rerouted here so the command's contract (one line,
    exit 2) holds whatever the dispatcher looks like.
    """

    def error(message: str) -> Any:
        sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.stderr.flush()
        raise SystemExit(2)

    original = parser.parse_known_args

    def parse_known_args(
        args: Optional[Sequence[str]] = None,
        namespace: Optional[argparse.Namespace] = None,
    ) -> Tuple[argparse.Namespace, List[str]]:
        ns, extra = original(args, namespace)
        if extra:
            error("unrecognized arguments: " + " ".join(extra))
        return ns, extra

    parser.error = error  # type: ignore[method-assign]
    parser.parse_known_args = parse_known_args  # type: ignore[method-assign, assignment]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``e6observe sim``."""
    parser.add_argument(
        "--port", type=A.port, default=50051, help="TCP port (0 = any free port; default 50051)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--flip-every",
        type=A.positive,
        default=None,
        metavar="S",
        help="announce and complete a blue/green switch every S seconds",
    )
    parser.add_argument(
        "--announce-for",
        type=A.non_negative,
        default=None,
        metavar="S",
        help="how long each scheduled switch stays announced (default: half the period)",
    )
    parser.add_argument(
        "--drain-wait",
        type=A.non_negative,
        default=0.0,
        metavar="S",
        help="at each scheduled switch, wait up to S seconds for queries on the old colour",
    )
    parser.add_argument(
        "--latency-ms",
        type=A.non_negative,
        default=0.0,
        metavar="X",
        help="added latency per RPC in milliseconds",
    )
    parser.add_argument(
        "--batch-rows", type=int, default=256, metavar="N", help="rows per result batch (default 256)"
    )
    _one_line_errors(parser)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; print counters; return the exit status."""
    if args.batch_rows < 1:
        sys.stderr.write(f"{PROG}: error: --batch-rows must be >= 1\n")
        return 2
    if args.latency_ms > 600_000:
        sys.stderr.write(f"{PROG}: error: --latency-ms must be <= 600000\n")
        return 2
    # Imported here: building the parser of every command must not need the simulator's
    # dependencies (the connector's generated code).
    from ..sim.server import Simulator

    sim = Simulator(port=args.port, host=args.host, latency_ms=args.latency_ms, batch_rows=args.batch_rows)
    try:
        sim.start()
    except OSError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.flip_every:
            sim.flip_every(args.flip_every, announce_for=args.announce_for, drain_wait=args.drain_wait)
        sched = f", flipping every {args.flip_every:g} s" if args.flip_every else ""
        print(f"{PROG}: serving on {sim.address} (active {sim.active}{sched}); Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    print(f"{PROG}: stopped", flush=True)
    print(json.dumps(sim.counters(), sort_keys=True), flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``e6observe sim`` without the dispatcher (``python -m e6observe.sim.cli``)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
