"""How a shell wakes the delivery agent, and starts it when none runs (standard library only).

The agent listens on a Unix datagram socket kept in a private per-user directory
(mode 0700, like ssh-agent's and gpg-agent's), named after a hash of the spool's
path: one agent per spool, and a short path whatever the spool's path is. A wake-up
is one non-blocking datagram that may carry tokens (destination key -> token) so
the agent holds them in memory only, or ask it to step aside for `spool replay`;
the directory being private is what keeps another user from receiving them.
When nobody listens, the shell spawns the agent detached and never waits for it.
A lock file next to the spool decides which agent runs: only the lock holder
binds the socket, a second agent exits at once.

Many shells starting at once must not each spawn an agent (each costs a Python start
on a machine busy starting shells). A shell that finds nobody listening spawns only
when no agent holds the lock and no other spawn is under way: a marker file, created
exclusively by the spawning shell and removed by the spawned agent just before it
reaches for the lock. Why a shell that skips the spawn still gets its row delivered:
it appended before it looked, and an agent holding the lock, or one whose marker is
still there, takes (or re-takes) the lock after that look and then scans the spool
(it binds its socket first, then reads every pending row; an idle agent handing over
looks once more after releasing the lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, NamedTuple

from oneiric_session.digest import sha256_hex

if TYPE_CHECKING:
    import socket
    import subprocess

    from oneiric_session.spool import Spool

# The child reads the tokens from this variable and removes it from its environment.
# (And the secret server.env values, destination key -> {name: value}, from SECRETS_ENV.)
SECRETS_ENV = "ONEIRIC_SESSION_AGENT_SECRETS"
TOKENS_ENV = "ONEIRIC_SESSION_AGENT_TOKENS"
# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH_BYTES = 107
# A wake-up with tokens is small; anything larger is not ours.
MAX_DATAGRAM_BYTES = 65536

# Past this age a spawn marker is stale (its shell or agent died before the agent reached for the
# lock): the next shell spawns. Long enough for an agent's Python to start on a loaded 2-core machine.
SPAWN_STALE_SECONDS = 5.0

# "starting": nobody listens yet, but an agent holds the lock or is being spawned; it reads the spool.
WakeResult = Literal["woken", "starting", "spawned", "failed"]

# Agents this process spawned: polled on the next spawn so none stays a zombie.
_spawned: list[subprocess.Popen[bytes]] = []


def _real(spool_path: Path) -> Path:
    """The spool's real path: a symlinked name and the file it points to share one lock and one socket."""
    return Path(os.path.realpath(spool_path))


def lock_path(spool_path: Path) -> Path:
    """The lock file whose holder is the one agent delivering this spool (found by the real path)."""
    real = _real(spool_path)
    return real.with_name(real.name + ".lock")


def spawn_marker_path(spool_path: Path) -> Path:
    """Present while a shell's spawned agent has not yet reached for the lock (holds the agent's pid)."""
    real = _real(spool_path)
    return real.with_name(real.name + ".spawning")


def agent_log_path(spool_path: Path) -> Path:
    """Where a spawned agent logs (its stdio goes to /dev/null)."""
    return spool_path.with_name(spool_path.name + ".agent.log")


def _private_dir(path: Path) -> Path | None:
    """`path`, created 0700 if missing; None unless it is a real directory owned by us and private."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return path


def _runtime_dirs() -> list[Path]:
    """Candidate private directories for the socket, best first: $XDG_RUNTIME_DIR, then the
    temporary directory as tempfile.gettempdir() looks for it (importing tempfile costs a shell ~1 ms)."""
    dirs = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        dirs.append(Path(runtime) / "oneiric-session")
    temporary = [os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")]
    for base in dict.fromkeys([*(os.path.abspath(t) for t in temporary if t), "/tmp"]):
        dirs.append(Path(base) / f"oneiric-session-{os.getuid()}")
    return dirs


def socket_dir_problems() -> list[str]:
    """Why candidate socket directories that exist are skipped (another user's, a symlink, not private)."""
    problems = []
    for candidate in _runtime_dirs():
        try:
            info = candidate.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            why = "not a directory"
        elif info.st_uid != os.getuid():
            why = f"it belongs to another user (uid {info.st_uid})"
        elif info.st_mode & 0o077:
            why = f"not private (mode {oct(info.st_mode & 0o777)})"
        else:
            continue
        problems.append(f"wake-up socket directory {candidate} refused: {why}")
    return problems


def socket_path(spool_path: Path) -> Path | None:
    """The agent's socket for this spool, in a private directory; None when no usable one exists."""
    name = sha256_hex(os.path.realpath(spool_path).encode())[:20] + ".sock"
    for candidate in _runtime_dirs():
        if len(os.fsencode(candidate / name)) > _MAX_SOCKET_PATH_BYTES:
            continue
        directory = _private_dir(candidate)
        if directory is not None:
            return directory / name
    return None


class Wakeup(NamedTuple):
    """What the datagrams read at once asked for: the newest token per destination key, and
    whether a foreground `spool replay` wants this agent to step aside.

    A NamedTuple, not a dataclass: every shell imports this module, and it costs a fifth to define.
    """

    datagrams: int = 0  # not `count`: that would hide tuple.count
    tokens: Mapping[str, str] = MappingProxyType({})
    handover: bool = False
    # Secret server.env values per destination key (never on disk: see destination.SECRET_REFERENCE).
    secrets: Mapping[str, Mapping[str, str]] = MappingProxyType({})

    def __repr__(self) -> str:  # the tokens are secrets: only their keys are shown
        return (
            f"Wakeup(datagrams={self.datagrams}, token_keys={sorted(self.tokens)}, handover={self.handover}, "
            f"secret_keys={sorted(self.secrets)})"
        )


def encode_wakeup(
    tokens: Mapping[str, str] | None = None,
    *,
    handover: bool = False,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> bytes:
    """The datagram: empty for a plain wake-up, else JSON {"tokens": {key: token}, "handover": bool}
    (and "secrets": {key: {name: value}} when there are secret server.env values)."""
    if not tokens and not handover and not secrets:
        return b""
    value: dict[str, object] = {"tokens": dict(tokens or {}), "handover": handover}
    if secrets:
        value["secrets"] = {k: dict(v) for k, v in secrets.items()}
    return json.dumps(value).encode()


def _secrets(value: object) -> dict[str, dict[str, str]]:
    """{key: {name: value}} with anything else dropped."""
    if not isinstance(value, dict):
        return {}
    return {
        k: {n: x for n, x in v.items() if isinstance(n, str) and isinstance(x, str)}
        for k, v in value.items()
        if isinstance(k, str) and isinstance(v, dict)
    }


def decode_wakeup(data: bytes) -> Wakeup:
    """One datagram read (a plain or malformed one is a plain wake-up)."""
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        value = {}
    if not isinstance(value, dict):
        value = {}
    tokens = value.get("tokens")
    tokens = tokens if isinstance(tokens, dict) else {}
    return Wakeup(
        datagrams=1,
        tokens={k: v for k, v in tokens.items() if isinstance(k, str) and isinstance(v, str) and v},
        handover=value.get("handover") is True,
        secrets=_secrets(value.get("secrets")),
    )


def wake(
    spool_path: Path,
    *,
    tokens: Mapping[str, str] | None = None,
    handover: bool = False,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> bool:
    """Send one wake-up without blocking; True when an agent is listening."""
    path = socket_path(spool_path)
    if path is None:
        return False
    try:
        # `_socket`, the C module `socket` wraps: importing `socket` itself (its enums, selectors)
        # costs a shell ~2 ms before its prompt, for one datagram.
        import _socket

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.sendto(encode_wakeup(tokens, handover=handover, secrets=secrets), os.fsencode(path))
        finally:
            sock.close()
    except BlockingIOError:
        return True  # its queue is full: it is alive and has wake-ups to read
    except OSError:
        return False  # no socket, or a stale one nobody reads
    return True


def spawn_agent(
    spool_path: Path,
    *,
    tokens: Mapping[str, str] | None = None,
    idle_exit_seconds: float | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> int | None:
    """Start an agent for this spool, detached; its pid, or None. Never waits for it.

    The tokens go in its environment only. It runs in "/" with `-P`, so neither the working
    directory of the shell that happened to start it (never pinned, never reported from) nor the
    spool's directory (maybe a team directory others can write) is on its import path, nor on the
    import path of a server it launches with `python -m` and no `server.cwd`.
    """
    import subprocess  # only when no agent listens: a shell that wakes one never pays for it

    for child in list(_spawned):
        if child.poll() is not None:
            _spawned.remove(child)
    env = dict(os.environ)
    env.pop(TOKENS_ENV, None)
    env.pop(SECRETS_ENV, None)
    if tokens:
        env[TOKENS_ENV] = json.dumps(dict(tokens))
    if secrets:
        env[SECRETS_ENV] = json.dumps({k: dict(v) for k, v in secrets.items()})
    spool_path = Path(os.path.abspath(spool_path))  # the agent runs in "/"
    # -P: the cwd is not put first on sys.path (and "/" is no attacker's directory anyway).
    argv = [sys.executable, "-P", "-m", "oneiric_session", "agent", "--foreground"]
    argv += ["--spool", str(spool_path)]
    argv += ["--log-file", str(agent_log_path(spool_path))]
    if idle_exit_seconds is not None:  # the spawning shell's setting: the agent has no settings dir
        argv += ["--idle-exit-seconds", repr(float(idle_exit_seconds))]
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            env=env,
            cwd="/",
        )
    except OSError:
        return None
    _spawned.append(child)
    return child.pid


def _marker_is_stale(marker: Path) -> bool:
    """True when the marker is too old, or names an agent that is gone."""
    try:
        with open(marker, "rb") as file:
            age = time.time() - os.fstat(file.fileno()).st_mtime
            text = file.read(32)
    except FileNotFoundError:
        return True
    if not -SPAWN_STALE_SECONDS < age < SPAWN_STALE_SECONDS:
        return True
    if not text.strip().isdigit():
        return False  # its shell is between creating it and spawning: fresh enough
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive (PermissionError: not ours, yet a live pid)
    return False


def _claim_spawn(marker: Path) -> int | None:
    """Create the marker exclusively: its descriptor, or None when another spawn is under way.

    A stale marker is replaced (two shells replacing one at once may both spawn: harmless).
    Raises OSError when the marker cannot be created at all.
    """
    for _ in range(2):
        try:
            return os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            if not _marker_is_stale(marker):
                return None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker)
    return None


def clear_spawn_marker(spool_path: Path) -> None:
    """The spawned agent's first act, just before it reaches for the lock (see the module doc)."""
    with contextlib.suppress(OSError):
        os.unlink(spawn_marker_path(spool_path))


def wake_or_spawn(
    spool_path: Path,
    *,
    tokens: Mapping[str, str] | None = None,
    idle_exit_seconds: float | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> WakeResult:
    """Wake the agent of this spool; else leave it to one starting; else start one.

    The caller's row must already be in the spool (see the module doc for why).
    """
    if wake(spool_path, tokens=tokens, secrets=secrets):
        return "woken"
    if agent_holds_lock(spool_path):
        return "starting"  # binding its socket, or handing over: it reads the spool after that
    marker = spawn_marker_path(spool_path)
    try:
        fd = _claim_spawn(marker)
    except OSError:
        fd = -1  # no marker possible: spawn anyway (a second agent exits at once)
    if fd is None:
        return "starting"
    extra = {"secrets": secrets} if secrets else {}  # (only then: callers may stand in for spawn_agent)
    pid = spawn_agent(spool_path, tokens=tokens, idle_exit_seconds=idle_exit_seconds, **extra)
    if fd >= 0:
        with contextlib.suppress(OSError):
            if pid is None:
                os.unlink(marker)
            else:
                os.write(fd, str(pid).encode())
        os.close(fd)
    return "spawned" if pid is not None else "failed"


def secrets_from_environment() -> dict[str, dict[str, str]]:
    """The secret server.env values the spawning shell passed (removed from this environment)."""
    try:
        return _secrets(json.loads(os.environ.pop(SECRETS_ENV, "") or "{}"))
    except ValueError:
        return {}


def tokens_from_environment() -> dict[str, str]:
    """The tokens the spawning shell passed (and remove them from this process's environment)."""
    try:
        value = json.loads(os.environ.pop(TOKENS_ENV, "") or "{}")
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str) and v}


class AgentLock:
    """The exclusive, non-blocking lock that makes one agent per spool; released by the kernel on death.

    Two parts, so that one spool file has one deliverer however it is named and whatever is
    deleted: a flock on the lock file next to the spool's *real* path (the fast path, freed by the
    kernel when its holder dies), then a claim written into the spool itself (`Spool.claim_agent`:
    the holder's pid, start time and boot id). A second deliverer that got a flock anyway (the lock
    file was deleted under a running agent, or replaced) finds the claim of a live agent and lets go.
    The lock file is opened without following symlinks and must be ours.
    """

    def __init__(self, spool_path: Path, spool: Spool | None = None) -> None:
        self.spool_path = Path(spool_path)
        # The claim is written through the holder's own connection when it has one: a short-lived
        # second connection to the spool in the agent's process left shells reading a stale WAL.
        self._spool = spool
        self.path = lock_path(self.spool_path)
        self._fd: int | None = None
        self._owner: str | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """True when this process now holds the lock; False when another agent holds it.

        Raises OSError when the lock cannot be taken at all (a foreign or unusable file).
        """
        if self._fd is not None:
            return True
        from oneiric_session.privacy import PrivatePathError, foreign_reason, open_private, private_dir

        refused = foreign_reason(self.spool_path)
        if refused is not None:
            raise PrivatePathError(f"{self.spool_path} refused: {refused}")
        private_dir(self.path.parent)
        for _ in range(3):
            fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            try:
                here = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                here = None
            held = os.fstat(fd)
            if here is not None and (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino):
                break
            os.close(fd)  # deleted or replaced between our open and our flock: lock the one in place
        else:
            return False
        try:
            claimed = self._claim()
        except BaseException:
            os.close(fd)
            raise
        if not claimed:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _claim(self) -> bool:
        from oneiric_session import procinfo
        from oneiric_session.errors import SpoolError
        from oneiric_session.spool import Spool

        me = procinfo.identify()
        owner = json.dumps({"pid": me.pid, "start_time": me.start_time, "boot_id": me.boot_id})

        def alive(text: str) -> bool:
            try:
                other = json.loads(text)
                pid = int(other["pid"])
            except (ValueError, TypeError, KeyError):
                return False
            if pid == me.pid:
                return False  # our own stale claim (an earlier lock of this process)
            return procinfo.is_alive(pid, other.get("start_time"), other.get("boot_id"))

        spool = self._spool or Spool(self.spool_path, durable=False, checkpoint_on_close=False)
        try:
            claimed = spool.claim_agent(owner, alive)
        except SpoolError as exc:
            raise OSError(str(exc)) from exc
        finally:
            if spool is not self._spool:
                spool.close()
        if claimed:
            self._owner = owner
        return claimed

    def release(self) -> None:
        if self._fd is None:
            return
        if self._owner is not None:
            from oneiric_session.errors import SpoolError
            from oneiric_session.spool import Spool

            spool = self._spool or Spool(self.spool_path, durable=False, checkpoint_on_close=False)
            with contextlib.suppress(SpoolError):
                spool.release_agent(self._owner)
            if spool is not self._spool:
                spool.close()
            self._owner = None
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the descriptor drops the flock


def agent_holds_lock(spool_path: Path) -> bool:
    """True when some process holds the agent lock of this spool (an agent is running)."""
    path = lock_path(spool_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


class WakeupListener:
    """The agent's end: a bound, non-blocking datagram socket (bind only while holding the lock)."""

    def __init__(self, spool_path: Path) -> None:
        self.path = socket_path(spool_path)
        self._sock: socket.socket | None = None
        self._creds = False
        self.refused = 0  # datagrams dropped because another user sent them

    def open(self) -> bool:
        """Bind the socket (replacing a stale file); False when no private directory is usable."""
        if self.path is None:
            return False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        import socket  # the agent's side: not the shell's

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # The sender's credentials on every datagram (Linux), set before the first can arrive:
        # what another user sent is dropped even if the private directory were opened up.
        # Elsewhere the 0700 directory (checked to be ours) is the guard.
        self._creds = hasattr(socket, "SO_PASSCRED") and hasattr(socket, "SCM_CREDENTIALS")
        if self._creds:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            except OSError:
                self._creds = False
        try:
            sock.bind(os.fsencode(self.path))
            os.chmod(self.path, 0o600)
        except OSError:
            sock.close()
            return False
        sock.setblocking(False)
        self._sock = sock
        return True

    def _receive(self) -> tuple[bytes, bool] | None:
        """One datagram and whether our own user sent it; None when there is none."""
        import socket
        import struct

        assert self._sock is not None
        try:
            if not self._creds:
                return self._sock.recv(MAX_DATAGRAM_BYTES), True
            data, ancillary, _flags, _addr = self._sock.recvmsg(
                MAX_DATAGRAM_BYTES, socket.CMSG_SPACE(struct.calcsize("3i"))
            )
        except OSError:  # BlockingIOError: nothing more to read
            return None
        uid = None
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                _pid, uid, _gid = struct.unpack("3i", value[: struct.calcsize("3i")])
        if uid != os.getuid():
            self.refused += 1
            if self.refused == 1:
                import logging

                logging.getLogger("oneiric_session.agent").warning(
                    "ignored a wake-up from uid %s on %s: only uid %d may wake this agent",
                    uid,
                    self.path,
                    os.getuid(),
                )
            return data, False
        return data, True

    def fileno(self) -> int:
        if self._sock is None:
            raise ValueError("listener is not open")
        return self._sock.fileno()

    def drain(self) -> Wakeup:
        """Read every waiting wake-up, merged: how many, the newest token per key, any handover."""
        count, handover = 0, False
        tokens: dict[str, str] = {}
        secrets: dict[str, Mapping[str, str]] = {}
        while self._sock is not None:
            received = self._receive()
            if received is None:
                break
            data, ours = received
            if not ours:
                continue  # another user's: not a wake-up, no token, no handover
            one = decode_wakeup(data)
            count += 1
            tokens.update(one.tokens)
            secrets.update(one.secrets)
            handover = handover or one.handover
        return Wakeup(datagrams=count, tokens=tokens, handover=handover, secrets=secrets)

    def close(self) -> None:
        """Unbind: from now on a shell sees nobody listening and spawns an agent. Idempotent."""
        if self._sock is None:
            return
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self._sock.close()
        self._sock = None
