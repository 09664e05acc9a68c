"""`oneiric-session agent ...` that SIGKILLs itself right after a server answered, before the
spool's acknowledgement: the crash window that exactly-once must survive.

    python killing_agent.py KIND[:N] [agent arguments...]

KIND is "start" or "end": the agent dies at the N-th answer to such a row (default the first),
with a window of calls in flight and answers not yet committed. The hook is `DeliveryAgent`'s
`on_answer` constructor argument, reached through the agent command's `run(on_answer=...)`.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from oneiric_session.cli import agent as agent_command
from oneiric_session.cli import build_parser
from oneiric_session.spool import SpooledEvent


def kill_after(spec: str) -> Callable[[SpooledEvent], None]:
    kind, _, nth = spec.partition(":")
    if kind not in ("start", "end"):
        raise SystemExit(f"killing_agent: {spec!r}: expected start, end, start:N or end:N")
    answers = 0

    def on_answer(row: SpooledEvent) -> None:
        nonlocal answers
        if row.kind == kind:
            answers += 1
            if answers >= int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)

    return on_answer


def main(argv: list[str]) -> int:
    spec, *rest = argv
    args = build_parser().parse_args(["agent", *rest])
    return agent_command.run(args, on_answer=kill_after(spec))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
