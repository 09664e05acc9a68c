"""Running code as the second local user of the permission tests (the `other_user` fixture)."""

from __future__ import annotations

import os
import pwd
import sys

import pytest


def system_python() -> str:
    """An interpreter the other user can run: the system's (a venv's may sit under /root, 0700).

    On the host that is Debian's python3; in the sid root (the 3.14 pass) only python3.X exists.
    """
    version = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in ("/usr/bin/python3", version):
        if os.path.exists(candidate):
            return candidate
    pytest.fail(f"no system Python for the other user ({version} missing)")


def as_user(user: pwd.struct_passwd, *python_args: str) -> list[str]:
    """The command line that runs the system Python with `python_args` as `user` (we are root)."""
    return ["runuser", "-u", user.pw_name, "--", system_python(), *python_args]
