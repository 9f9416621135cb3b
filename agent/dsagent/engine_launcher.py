"""Starts the engine command with PR_SET_PDEATHSIG set, by exec: the engine gets SIGTERM if the agent dies.

Why a separate program: the parent-death signal must be set inside the child, and running Python code
(ctypes) between fork and exec in the multi-threaded agent (subprocess's `preexec_fn`) can deadlock the
child on a lock another thread held at fork time. Here it runs in a fresh single-threaded interpreter
(started with -S, standard library only) that then replaces itself with the engine command, so the pid
the supervisor holds is the engine's. The signal survives execve, and the supervisor's pid file still lets
a restarted agent reap what a SIGKILLed one left behind where prctl is unavailable.

    python -S engine_launcher.py PARENT_PID COMMAND [ARG ...]
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1
EXIT_PARENT_GONE = 125
EXIT_CANNOT_EXEC = 127


def _set_parent_death_signal() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not glibc Linux: the pid-file reap covers a dead agent


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: engine_launcher.py PARENT_PID COMMAND [ARG ...]", file=sys.stderr)
        return 2
    parent_pid, command = int(argv[0]), argv[1:]
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the agent died before prctl took effect
        return EXIT_PARENT_GONE
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"engine_launcher: cannot start {command[0]}: {exc.strerror or exc}", file=sys.stderr, flush=True)
    return EXIT_CANNOT_EXEC


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
