"""What the supervisor needs to know and do about processes: who holds a TCP port, whether a process group
still has live members, how to stop a whole group (SIGTERM, grace, SIGKILL), and reaping orphans.

Why a module of its own: an inference engine is a tree of processes (vLLM's API server, its engine core
and one worker per GPU, each holding GPU memory). Stopping only the top process leaves the workers running;
trusting whatever answers on the engine port takes a foreign process for the engine. All of this reads
Linux's /proc (the platform the agent runs on); where /proc is absent the answers are "unknown" (None) and
the supervisor falls back to what it did before.

When the agent is PID 1 in a container (or a child subreaper), processes orphaned by the engine are
re-parented to it and stay zombies unless it waits for them: `reap_orphans` does that without touching
the children a `subprocess.Popen` owns (whose exit codes the supervisor reads).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")
TCP_LISTEN_STATE = "0A"
GROUP_POLL_SECONDS = 0.05
AFTER_KILL_WAIT_SECONDS = 5.0
SPAWN_ID_VARIABLE = "DSAGENT_ENGINE_SPAWN_ID"  # set in the engine's environment; every worker inherits it


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]; None if gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def process_name(pid: int) -> str:
    """The short command name (/proc/PID/comm), or '?' when it cannot be read."""
    try:
        return (PROC / str(pid) / "comm").read_text().strip() or "?"
    except OSError:
        return "?"


def _all_pids() -> list[int]:
    try:
        return [int(entry) for entry in os.listdir(PROC) if entry.isdigit()]
    except OSError:
        return []


def live_group_members(pgid: int) -> list[int]:
    """Pids of the processes (zombies excluded) whose process group is `pgid`."""
    members = []
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(pid)
    return members


def has_spawn_id(pid: int, spawn_id: str) -> bool:
    """Whether the process's environment carries this spawn id (so it is that engine or one of its workers)."""
    try:
        environ = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return False
    return f"{SPAWN_ID_VARIABLE}={spawn_id}".encode() in environ.split(b"\0")


def listening_socket_inodes(port: int) -> set[int] | None:
    """Inodes of the TCP sockets listening on `port` (IPv4 and IPv6); None when /proc/net cannot be read."""
    inodes: set[int] = set()
    readable = False
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != TCP_LISTEN_STATE:
                continue
            if int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(parts[9]))
    return inodes if readable else None


def _socket_inodes_of(pid: int) -> set[int]:
    inodes = set()
    try:
        fd_dir = PROC / str(pid) / "fd"
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def pids_listening_on(port: int, candidates: Iterable[int] | None = None) -> list[int] | None:
    """Pids (among `candidates`, default all visible) holding a socket that listens on `port`.

    None when the listening sockets cannot be read at all; an empty list when nobody visible holds one
    (the holder may belong to another user, whose descriptors are not readable).
    """
    listeners = listening_socket_inodes(port)
    if listeners is None:
        return None
    if not listeners:
        return []
    return [pid for pid in (candidates if candidates is not None else _all_pids())
            if _socket_inodes_of(pid) & listeners]


def port_holder_text(port: int) -> str | None:
    """'pid 123 (python3)' for the process listening on `port`, 'an unknown process' when a listener exists
    but its owner is not visible, None when nothing listens (or /proc cannot tell)."""
    listeners = listening_socket_inodes(port)
    if not listeners:
        return None
    holders = pids_listening_on(port) or []
    if not holders:
        return "a process this user cannot see"
    pid = min(holders)
    return f"pid {pid} ({process_name(pid)})"


def port_served_by_group(port: int, pgid: int) -> bool | None:
    """Whether a member of process group `pgid` listens on `port`; None when this cannot be told."""
    listeners = listening_socket_inodes(port)
    if listeners is None:
        return None
    members = live_group_members(pgid)
    if not members:
        return None if not PROC.exists() else False
    return any(_socket_inodes_of(pid) & listeners for pid in members)


def _signal_group(pgid: int, signum: int, leader: subprocess.Popen[bytes] | None) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        if leader is not None and leader.poll() is None:
            try:
                leader.send_signal(signum)
            except ProcessLookupError:
                pass


def _group_done(pgid: int, leader: subprocess.Popen[bytes] | None) -> bool:
    leader_done = leader is None or leader.poll() is not None
    return leader_done and not live_group_members(pgid)


def terminate_group(pgid: int, grace_seconds: float, leader: subprocess.Popen[bytes] | None = None,
                    what: str = "engine") -> int | None:
    """SIGTERM the whole process group, wait up to the grace period for every member (not just the leader)
    to exit, then SIGKILL the group; returns the leader's exit code when it is our child."""
    if _group_done(pgid, leader):
        return leader.returncode if leader is not None else None
    _signal_group(pgid, signal.SIGTERM, leader)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and not _group_done(pgid, leader):
        time.sleep(GROUP_POLL_SECONDS)
    if not _group_done(pgid, leader):
        survivors = live_group_members(pgid)
        log.warning("%s process group %d did not stop within %g s of SIGTERM; killing %s", what, pgid,
                    grace_seconds, ", ".join(f"pid {pid} ({process_name(pid)})" for pid in survivors) or "it")
        _signal_group(pgid, signal.SIGKILL, leader)
        deadline = time.monotonic() + AFTER_KILL_WAIT_SECONDS
        while time.monotonic() < deadline and not _group_done(pgid, leader):
            time.sleep(GROUP_POLL_SECONDS)
    if leader is not None:
        try:
            leader.wait(timeout=AFTER_KILL_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        return leader.returncode
    return None


def reaps_orphans() -> bool:
    """Orphans are re-parented to this process when it is PID 1 (a container's init)."""
    return os.getpid() == 1


def reap_orphans(owned_pids: Iterable[int]) -> list[int]:
    """Wait for this process's zombie children that no Popen owns; returns the pids reaped."""
    owned = set(owned_pids)
    me = str(os.getpid())
    reaped = []
    for pid in _all_pids():
        if pid in owned:
            continue
        fields = _stat_fields(pid)
        if fields is None or len(fields) < 2 or fields[0] != "Z" or fields[1] != me:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
            reaped.append(pid)
        except ChildProcessError:
            pass
    return reaped
