"""Named network namespaces (`/run/netns/<name>`, as `ip netns` makes them), without forking.

A namespace is made by a short-lived thread that unshares its own network namespace (network
namespaces are per thread, so the rest of the process stays where it is) and bind-mounts it
under /run/netns. A netlink socket keeps the namespace it was created in for its whole life, so
a socket for a task namespace is likewise created by a thread that setns()es in and then ends.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from shoal.errors import KernelError, Unavailable

RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: which kind of namespace (linux >= 4.11)
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 0x100000
MNT_DETACH = 2
NETLINK_ROUTE = 0

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
_shared_lock = threading.Lock()
_run_dir_shared = False


def _errno_check(ret: int, what: str) -> None:
    if ret != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def in_thread(fn: Callable[[], T]) -> T:
    """Run fn in a fresh thread: whatever namespace it enters dies with the thread."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name="shoal-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def path(name: str) -> str:
    return os.path.join(RUN_DIR, name)


def current_fd() -> int:
    """An fd of the namespace the calling thread is in."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _is_netns_fd(fd: int) -> bool:
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False  # ENOTTY: a plain file, e.g. a mount point whose mount is gone


def open_fd(name: str) -> int | None:
    """An fd of the named namespace; None if it does not exist or its file is stale."""
    try:
        fd = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    if _is_netns_fd(fd):
        return fd
    os.close(fd)
    return None


def _share_run_dir() -> None:
    # As iproute2 does: make /run/netns a shared mount so namespaces pinned here are seen by
    # mount namespaces cloned later (e.g. by `ip netns exec`).
    global _run_dir_shared
    with _shared_lock:
        if _run_dir_shared:
            return
        os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
        target = RUN_DIR.encode()
        if _libc.mount(b"", target, b"none", MS_SHARED | MS_REC, None) != 0:
            # EINVAL: not a mount point yet; bind it on itself first.
            _errno_check(_libc.mount(target, target, b"none", MS_BIND | MS_REC, None),
                         f"bind-mount {RUN_DIR}")
            _errno_check(_libc.mount(b"", target, b"none", MS_SHARED | MS_REC, None),
                         f"make {RUN_DIR} shared")
        _run_dir_shared = True


def create(name: str) -> int:
    """Make the named namespace (a stale file of that name is replaced); return an fd of it."""
    fd = open_fd(name)
    if fd is not None:
        return fd
    _share_run_dir()
    target = path(name)
    try:
        os.unlink(target)  # a stale mount point left by a namespace that is gone
    except FileNotFoundError:
        pass

    def unshare() -> int:
        _errno_check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        return current_fd()

    fd = in_thread(unshare)
    try:
        os.close(os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        src = f"/proc/self/fd/{fd}".encode()
        _errno_check(_libc.mount(src, target.encode(), b"none", MS_BIND, None),
                     f"bind-mount namespace on {target}")
    except BaseException:
        os.close(fd)
        _unlink_quiet(target)
        raise
    return fd


def _unlink_quiet(target: str) -> None:
    try:
        os.unlink(target)
    except FileNotFoundError:
        pass


def remove(name: str) -> None:
    """Unpin the named namespace; it goes once no process or fd holds it. No error if absent."""
    target = path(name)
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not mounted (stale file)
            raise OSError(code, f"umount {target}: {os.strerror(code)}")
    _unlink_quiet(target)


def names(prefix: str) -> list[str]:
    try:
        entries = os.listdir(RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in entries if n.startswith(prefix))


def enter(fd: int) -> None:
    """Move the calling thread into the namespace of fd. Call it only in a thread made by
    in_thread, so that the namespace is left when the thread ends (used by shoal.dns)."""
    _errno_check(_libc.setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")


def netlink_socket(fd: int) -> socket.socket:
    """A NETLINK_ROUTE socket that lives in the namespace of fd."""

    def make() -> socket.socket:
        _errno_check(_libc.setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)

    return in_thread(make)


def check_mount_namespace() -> None:
    """Refuse to run under `ip netns exec`.

    `ip netns exec` gives the process a private mount namespace that is a slave of the host's.
    Namespaces this process pinned under /run/netns would then be seen by no other process (a
    stale empty file outside) and would be lost when the agent restarts. Its signature: sysfs
    on /sys mounted with the namespace's name as source, and /run/netns a slave mount.
    """
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return
    sys_source, run_slave = None, False
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 2:
            continue
        if fields[4] == "/sys" and rest[0] == "sysfs":
            sys_source = rest[1]
        if fields[4] == RUN_DIR:
            opts = fields[6:]
            run_slave = any(o.startswith("master:") for o in opts)
    if run_slave and sys_source and os.path.exists(path(sys_source)):
        raise Unavailable(
            f"this process runs under `ip netns exec {sys_source}`, whose private mount "
            "namespace hides the task namespaces it makes from every other process; start it "
            f"with `nsenter --net={path(sys_source)} ...` instead (network namespace only)")


def kernel_error(what: str, exc: OSError) -> KernelError:
    return KernelError(f"{what}: {exc.strerror or exc}")
