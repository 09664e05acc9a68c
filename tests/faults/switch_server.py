"""A stdio MCP server that a test breaks and heals in place (test support, never shipped).

    python switch_server.py --db PATH

Each launch reads the JSON file named by FAULT_CONTROL. While that file exists it holds
the fault server's variables (FAULT_MODE, FAULT_DELAY, ...) and the fault server runs;
once a test removes it, the bundled server runs on --db. The destination the spool
recorded never changes, so healing needs no new settings: the agent's next launch is
healthy. Each launch appends {"pid", "fault"} to FAULT_LAUNCHES (fault null: the bundled
server), and exec keeps the pid, so a test can count the servers and see that none outlived
its agent.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

FAULT_SERVER = Path(__file__).resolve().parent.parent / "support" / "fault_server.py"


def main(argv: list[str]) -> None:
    db = argv[argv.index("--db") + 1]
    try:
        fault = json.loads(Path(os.environ["FAULT_CONTROL"]).read_text(encoding="utf-8"))
    except FileNotFoundError:
        fault = None
    with open(os.environ["FAULT_LAUNCHES"], "a", encoding="utf-8") as file:
        file.write(json.dumps({"pid": os.getpid(), "fault": fault}) + "\n")
    if fault is None:
        os.execv(sys.executable, [sys.executable, "-m", "oneiric_session", "serve", "--db", db])
    os.environ.update({str(k): str(v) for k, v in fault.items()})
    os.execv(sys.executable, [sys.executable, str(FAULT_SERVER)])


if __name__ == "__main__":
    main(sys.argv[1:])
