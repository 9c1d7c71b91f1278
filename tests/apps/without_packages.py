"""An application whose environment lacks some packages (argv[1]: comma-separated module prefixes
made unimportable), instrumented on the simulator through an abrupt flip. Prints one JSON line."""

from __future__ import annotations

import importlib.abc
import json
import logging
import sys
import urllib.request
from typing import Any, Optional, Sequence

BLOCKED = tuple(p for p in sys.argv[1].split(",") if p)


class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Optional[Sequence[str]], target: Any = None) -> Any:
        if name.startswith(BLOCKED):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Missing())
logging.basicConfig(level=logging.WARNING)

from e6data_python_connector import e6data_grpc  # noqa: E402

import e6observe  # noqa: E402
from e6observe import _api  # noqa: E402
from e6observe.sim import Simulator  # noqa: E402

sim = Simulator(port=0)
sim.start()
rec = e6observe.instrument(prometheus_port=0)
conn = e6data_grpc.Connection(host=sim.host, port=sim.port, username="app@example.com", password="pw")


def query(sql: str) -> Any:
    cur = conn.cursor()
    cur.execute(sql)
    rows = cur.fetchall()
    cur.clear()
    return rows


rows = [query("SELECT 1")]
sim.flip()
rows.append(query("SELECT 2"))
server = next(o for n, o, _ in _api._active.sinks if n == "sink.prometheus").server
text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
switches = sum(
    float(line.rsplit(" ", 1)[1])
    for line in text.splitlines()
    if line.startswith("e6data_strategy_switches_total{")
)
loaded = sorted(m for m in sys.modules if m.startswith(BLOCKED)) if BLOCKED else []
conn.close()
e6observe.uninstrument()
sim.stop()
print(
    json.dumps({"rows": rows, "switches": switches, "loaded": loaded, "active": rec.active if rec else None})
)
