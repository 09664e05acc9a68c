"""Our SessionEventEmitter inside real Oneiric 0.33.3's own shells (Python 3.14).

The 0.17.0 tests of test_real_oneiric_shell.py, unchanged: this directory's conftest gives them
`oneiric_python` = Oneiric 0.33.3 with this checkout (its AdminShell and session tracker are
0.17.0's, see the issue 10 notes).
"""

from __future__ import annotations

from tests.integration import test_real_oneiric_shell as on017

user = on017.user

test_default_destination_is_the_bundled_server_on_oneirics_python = (
    on017.test_default_destination_is_the_bundled_server_on_oneirics_python
)
test_oneirics_shell_session_reaches_the_bundled_server_with_its_end = (
    on017.test_oneirics_shell_session_reaches_the_bundled_server_with_its_end
)
test_adminshell_in_a_terminal_ends_on_ctrl_d = on017.test_adminshell_in_a_terminal_ends_on_ctrl_d
test_a_hung_server_neither_delays_the_prompt_nor_the_exit = (
    on017.test_a_hung_server_neither_delays_the_prompt_nor_the_exit
)
