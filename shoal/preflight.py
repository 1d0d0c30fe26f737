"""Can this machine run shoal? Checked before `lab up` and `agent` start, so that a missing
piece is named up front instead of surfacing as a netlink error halfway through.

`check()` raises Unavailable when not root, when a tool is missing (naming the Debian package
that provides it), or when the kernel lacks network namespaces, veth, bridge or vxlan. The
kernel is asked directly: a throwaway namespace `shoal-preflight-<pid>` gets a veth pair, a
bridge and a vxlan device, and is deleted again whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from shoal.errors import Unavailable

# Tool -> the Debian 12 package that provides it.
PACKAGES = {
    "ip": "iproute2",
    "nft": "nftables",
    "sysctl": "procps",
    "nsenter": "util-linux",
    "dig": "dnsutils",
    "iperf3": "iperf3",
    "wrk": "wrk",
    "dnsmasq": "dnsmasq-base",
    "curl": "curl",
}

DEFAULT_TOOLS = ("ip", "nft", "sysctl", "nsenter")

# Kernel feature -> `ip` arguments (run inside the throwaway namespace) that need it.
FEATURES: list[tuple[str, list[str]]] = [
    ("veth", ["link", "add", "pf0", "type", "veth", "peer", "name", "pf1"]),
    ("bridge", ["link", "add", "pfbr", "type", "bridge"]),
    ("vxlan", ["link", "add", "pfvx", "type", "vxlan", "id", "4242", "dstport", "4789"]),
]


def check_root() -> None:
    if os.geteuid() != 0:
        raise Unavailable(
            "shoal needs root: it creates network namespaces, links and nftables rules "
            "(run it as root, e.g. with sudo)"
        )


def check_tools(tools: Sequence[str]) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        packages = sorted({PACKAGES.get(t, t) for t in missing})
        raise Unavailable(
            f"missing tool{'s' if len(missing) > 1 else ''}: {', '.join(missing)} "
            f"(install with: apt-get install -y {' '.join(packages)}; or run `make setup`)"
        )


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30
    )


def check_kernel() -> None:
    netns = f"shoal-preflight-{os.getpid()}"
    made = _ip("netns", "add", netns)
    if made.returncode != 0:
        raise Unavailable(
            f"the kernel cannot make network namespaces: `ip netns add` said: {made.stderr.strip()}"
        )
    try:
        for feature, args in FEATURES:
            proc = _ip("-n", netns, *args)
            if proc.returncode != 0:
                raise Unavailable(
                    f"the kernel lacks {feature} links (CONFIG_{feature.upper()}; try "
                    f"`modprobe {feature}`): `ip link add` said: {proc.stderr.strip()}"
                )
    finally:
        _ip("netns", "del", netns)


def check(tools: Sequence[str] = DEFAULT_TOOLS) -> None:
    """Raise Unavailable with a message a user can act on if shoal cannot run here."""
    check_root()
    check_tools(["ip", *tools] if "ip" not in tools else tools)
    check_kernel()
