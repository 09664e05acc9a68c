"""Tee a stdio MCP server's input (never shipped): `python recording_proxy.py LOG DELAY -- CMD...`.

Every line the client writes is appended to LOG before it is forwarded to CMD (a real server, e.g.
the bundled one), so a test sees each call a server received, its arguments (the token included)
and how often the same event_id arrived. A tool call is forwarded DELAY seconds late (a slow server).
"""

from __future__ import annotations

import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    log, delay, command = argv[1], float(argv[2]), argv[4:]
    child = subprocess.Popen(command, stdin=subprocess.PIPE)  # stdout, stderr: ours (the wire)
    assert child.stdin is not None
    with open(log, "ab") as record:
        for line in iter(sys.stdin.buffer.readline, b""):
            record.write(line)
            record.flush()
            if delay and b'"tools/call"' in line:
                time.sleep(delay)  # sleep-ok: the slow server this proxy plays
            try:
                child.stdin.write(line)
                child.stdin.flush()
            except BrokenPipeError:
                break
    child.stdin.close()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
