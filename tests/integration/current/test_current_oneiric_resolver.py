"""Our entry point in the real Oneiric 0.33.3 plugin loader and resolver (Python 3.14).

The 0.17.0 tests of test_real_oneiric_resolver.py, unchanged: this directory's conftest gives
them `oneiric_python` = Oneiric 0.33.3 with this checkout installed by a plain `pip install`.

One difference in Oneiric itself: 0.33.3 no longer reads `settings/oneiric.yaml` in the current
directory. Its settings files are `$XDG_CONFIG_HOME/oneiric/config.yaml` (and `local.yaml`),
`$ONEIRIC_CONFIG`, or `settings/oneiric.yaml` beside its own install. So the settings file the
0.17.0 tests write in the project directory is linked to where 0.33.3 reads it, in the test's
XDG_CONFIG_HOME (on017.clean_env puts it in tmp_path).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import test_real_oneiric_resolver as on017


@pytest.fixture(autouse=True)
def oneiric_settings_in_the_user_config(tmp_path: Path) -> None:
    """$XDG_CONFIG_HOME/oneiric/config.yaml -> the project's settings/oneiric.yaml (if it writes one)."""
    config = Path(on017.clean_env(tmp_path)["XDG_CONFIG_HOME"]) / "oneiric"
    config.mkdir(parents=True)
    (config / "config.yaml").symlink_to(tmp_path / "project" / "settings" / "oneiric.yaml")


test_selection_in_settings_file_activates_memory = on017.test_selection_in_settings_file_activates_memory
test_environment_selection_beats_settings_file = on017.test_environment_selection_beats_settings_file
test_auto_load_without_selection_activates_session_buddy = (
    on017.test_auto_load_without_selection_activates_session_buddy
)
test_unwritable_spool_fails_activation = on017.test_unwritable_spool_fails_activation
test_configuration_error_fails_activation_not_registration = (
    on017.test_configuration_error_fails_activation_not_registration
)
test_oneiric_cli_swaps_to_the_selected_provider = on017.test_oneiric_cli_swaps_to_the_selected_provider
