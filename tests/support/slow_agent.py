"""`oneiric-session agent ...` that holds the lock SECONDS before it listens on its wake-up socket:
a real agent starved of CPU between the two (a niced agent on a busy machine), made repeatable.

    python slow_agent.py SECONDS [agent arguments...]
"""

from __future__ import annotations

import sys
import time

from oneiric_session.agent.doorbell import Doorbell
from oneiric_session.cli import agent as agent_command
from oneiric_session.cli import build_parser


def main(argv: list[str]) -> int:
    seconds, *rest = argv
    opened = Doorbell.open
    late = [float(seconds)]

    def open_late(self: Doorbell) -> bool:
        if late:
            time.sleep(late.pop())  # sleep-ok: the starved moment this script stands for
        return opened(self)

    Doorbell.open = open_late  # type: ignore[method-assign]
    return agent_command.run(build_parser().parse_args(["agent", *rest]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
