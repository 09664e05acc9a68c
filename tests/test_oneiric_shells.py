"""activate_oneiric() where Oneiric is absent or tracking is off: False, nothing installed, no mcp.

Its effect on real Oneiric shells is tested in tests/integration/test_real_oneiric_activation.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import sys
import oneiric_session
first, second = oneiric_session.activate_oneiric(), oneiric_session.activate_oneiric()
from oneiric_session.shell.oneiric_shells import is_active
print(first, second, is_active(), "mcp" in sys.modules, "pydantic" in sys.modules)
"""


@pytest.mark.parametrize("provider", ["session-buddy", "noop"])
def test_without_oneiric_activation_is_false_and_imports_no_mcp(tmp_path: Path, provider: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ONEIRIC_SESSION_PROVIDER": provider}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False", "False", "False", "False"]
    assert proc.stderr == ""
