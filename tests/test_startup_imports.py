"""What ``instrument()`` loads at start-up (issue 17, item 6: start-up RSS ≤ 3 MiB).

Each module below is loaded on first use, not by ``instrument()``: protobuf's JSON support and
the generated messages until ``/status`` or ``/events`` is served, ``importlib.resources`` until
a static file of the status page is (about 0.6 MiB together). The test runs a fresh interpreter
(the test process has them all loaded) and checks both halves: not loaded at start, and
everything still served once it is used.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import subproc

ROOT = Path(__file__).resolve().parent.parent

LAZY = (
    "google.protobuf.json_format",
    "e6observe.v1.convert",
    "e6observe.v1.events_pb2",
    "importlib.resources",
)

_START = r"""
import json, sys, urllib.request
import e6data_python_connector.e6data_grpc  # the application's own import
import e6observe
e6observe.instrument(prometheus_port=0)
lazy = sys.argv[1].split(",")
loaded_at_start = [m for m in lazy if m in sys.modules]
from e6observe import _api
srv = next(o.server for c, o, _ in _api._active.sinks if c == "sink.prometheus")
served = {}
for path in ("/status", "/", "/static/status.js"):
    with urllib.request.urlopen(srv.url + path, timeout=10) as r:
        served[path] = [r.status, len(r.read())]
status = json.loads(urllib.request.urlopen(srv.url + "/status", timeout=10).read())
e6observe.uninstrument()
print(json.dumps({"loaded_at_start": loaded_at_start, "served": served,
                  "status_keys": sorted(status)}))
"""


def _run(code: str, *args: str) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subproc.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_instrument_leaves_the_lazy_modules_unloaded_and_still_serves_them() -> None:
    out = _run(_START, ",".join(LAZY))
    assert out["loaded_at_start"] == []
    served = out["served"]
    assert isinstance(served, dict)
    for path, (status, size) in served.items():
        assert status == 200 and size > 0, path
    assert "recent_events" in out["status_keys"]  # type: ignore[operator]
