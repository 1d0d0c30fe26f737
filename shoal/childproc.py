"""What every helper process the agent starts (the DNS resolver, the HTTP mesh) does first:
die with the agent, and lift its file limit."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL from the kernel when the parent dies, even if the control pipe is shared."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        sys.exit(0)  # the parent died before prctl: nobody will ever drive this process


def raise_fd_limit() -> None:
    """Sockets per task and per connection: the default soft limit of 1024 is too few."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
