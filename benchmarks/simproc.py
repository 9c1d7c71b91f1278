"""The benchmark's simulator, in its own process, controlled by JSON lines on stdin.

The simulator runs apart from the measured clients so that its server threads never compete
with them for a GIL (as a remote engine would not); on the 2-core benchmark machine it gets one
core while the client being measured gets the other.

Protocol: on start it prints ``{"port": N}``. Each stdin line is a JSON object with ``cmd``
(``announce``, ``complete``, ``flip`` (with ``announce``), ``counters``, ``quit``); each gets
exactly one JSON line back.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from e6observe.sim import Simulator


def _handle(sim: Simulator, msg: dict[str, Any]) -> Any:
    cmd = msg.get("cmd")
    if cmd == "announce":
        return {"pending": sim.announce(msg.get("to"))}
    if cmd == "complete":
        sim.complete()
        return {"active": sim.active}
    if cmd == "flip":
        return {"active": sim.flip(announce=bool(msg.get("announce", True)))}
    if cmd == "counters":
        return sim.counters()
    if cmd == "active":
        return {"active": sim.active, "pending": sim.pending}
    raise ValueError(f"unknown command {cmd!r}")


def main() -> int:
    latency = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    sim = Simulator(port=0, latency_ms=latency)
    sim.start()
    out = sys.stdout
    out.write(json.dumps({"port": sim.port}) + "\n")
    out.flush()
    try:
        for line in sys.stdin:
            msg = json.loads(line)
            if msg.get("cmd") == "quit":
                out.write(json.dumps({"ok": True}) + "\n")
                out.flush()
                break
            try:
                reply = {"ok": True, "result": _handle(sim, msg)}
            except Exception as exc:  # reported to the runner, which fails loudly
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
