"""A record in the outbox that is never read (another user's, written by a shell run with `sudo`
keeping HOME, or one that cannot be read) is never delivered: `status`, `spool list` and
`spool replay` say so, and the last two exit 1, instead of saying that nothing waits."""

from __future__ import annotations

import json
import os

from oneiric_session.config.loader import load_config
from oneiric_session.spool.outbox import Outbox, outbox_dir
from oneiric_session.tracking import events
from oneiric_session.tracking.limits import Limits
from tests.support.delivery import Scene

CAPS = (10_000, 64 * 1024 * 1024, 30 * 86400.0)
ANOTHER_UID = 4242


def _another_users_record(scene: Scene) -> str:
    destination = load_config(environ=scene.env).destination()
    start = events.build_start_event(component_name="sudo", shell_type="S", metadata=None, limits=Limits())
    assert Outbox(scene.spool_path, caps=CAPS).append_start(
        "local-sudo", destination, start, pid=os.getpid(), pid_start_time=None, boot_id=None
    )
    directory = outbox_dir(scene.spool_path)
    (name,) = os.listdir(directory)
    os.chown(os.path.join(directory, name), ANOTHER_UID, ANOTHER_UID)
    return name


def test_another_users_record_in_the_outbox_is_said_by_status_list_and_replay(scene: Scene) -> None:
    name = _another_users_record(scene)
    status = json.loads(scene.run("status", "--json").stdout)["delivery"]
    assert any(name in w and "never delivered" in w for w in status.get("warnings", [])), status
    listing = scene.run("spool", "list")
    assert listing.returncode == 1, listing.stdout
    assert "1 record(s) in the outbox" in listing.stdout and "another user" in listing.stdout, listing.stdout
    replay = scene.run("spool", "replay")
    assert replay.returncode == 1, replay.stdout + replay.stderr
    assert "never delivered" in replay.stdout, replay.stdout
    assert os.path.exists(os.path.join(outbox_dir(scene.spool_path), name))  # left where it is
