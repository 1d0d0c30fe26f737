"""The lab's wiring: namespaces and links, made with `ip` (not a hot path: clarity first).

    shoal-<lab>-sw:     br0 ── node1, node2, ..., ext   (veth ends, ports of the bridge)
    shoal-<lab>-nodeI:  lo, eth0 198.18.0.(10+I)/24     (peer of port nodeI), ip_forward on
    shoal-<lab>-ext:    lo, eth0 198.18.0.2/24          (peer of port ext)

Every link is created directly inside its namespace (`ip -n NS link add ... peer ... netns
OTHER`), so the machine's own namespace never holds a lab link, not even for a moment. There
is no default route anywhere: a lab packet has nowhere to go but the switch. Each lab has its
own switch, so two labs can use the same addresses side by side.

`build` is idempotent: it creates what is missing and leaves what is there. `destroy` deletes
every namespace whose name starts with the lab's prefix, task namespaces made by agents too.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence

from shoal.errors import KernelError
from shoal.lab.layout import (
    EXT,
    HOST_LINK,
    SWITCH_BRIDGE,
    UNDERLAY_PREFIXLEN,
    Lab,
)


def run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; a failure becomes a KernelError naming the command and its stderr."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60
        )
    except FileNotFoundError as exc:
        raise KernelError(f"{argv[0]} not found: is it installed?") from exc
    except subprocess.TimeoutExpired as exc:
        raise KernelError(f"`{' '.join(argv)}` timed out") from exc
    if check and proc.returncode != 0:
        raise KernelError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return run(["ip", *(("-n", netns) if netns else ()), *args], check=check)


def netns_list() -> list[str]:
    return [entry["name"] for entry in json.loads(ip("-j", "netns", "list").stdout or "[]")]


def lab_netns(name_prefix: str) -> list[str]:
    """Namespaces whose name starts with `name_prefix` ("shoal-<lab>-")."""
    return sorted(ns for ns in netns_list() if ns.startswith(name_prefix))


def mac_of(addr: str) -> str:
    """A locally administered MAC made of the IPv4 address: 198.18.0.11 -> 02:00:c6:12:00:0b."""
    return "02:00:" + ":".join(f"{int(b):02x}" for b in addr.split("."))


def link_exists(netns: str, link: str) -> bool:
    return ip("link", "show", "dev", link, netns=netns, check=False).returncode == 0


def _ensure_netns(netns: str, existing: set[str]) -> None:
    if netns not in existing:
        ip("netns", "add", netns)
        existing.add(netns)
    ip("link", "set", "lo", "up", netns=netns)


def _ensure_host(lab: Lab, netns: str, port: str, addr: str, existing: set[str]) -> None:
    """A host namespace with eth0 plugged into switch port `port`."""
    fresh = netns not in existing
    _ensure_netns(netns, existing)
    sw = lab.switch_netns
    # A veth pair lives and dies as one, but not at once: the kernel destroys a deleted
    # namespace's devices in the background, so the switch port of a host just made again may
    # still be there for a moment. Only a port whose host end is there is kept.
    if fresh or not link_exists(netns, HOST_LINK):
        if link_exists(sw, port):
            ip("link", "del", port, netns=sw, check=False)
        ip("link", "add", port, "type", "veth", "peer", "name", HOST_LINK, "netns", netns, netns=sw)
    ip("link", "set", port, "master", SWITCH_BRIDGE, "up", netns=sw)
    # A host made again (its namespace was lost) keeps its MAC, so its neighbours' ARP caches
    # stay right: there is no gratuitous ARP here to correct them.
    ip("link", "set", HOST_LINK, "address", mac_of(addr), netns=netns)
    ip("addr", "replace", f"{addr}/{UNDERLAY_PREFIXLEN}", "dev", HOST_LINK, netns=netns)
    ip("link", "set", HOST_LINK, "up", netns=netns)


def build(lab: Lab) -> None:
    """Create whatever is missing of the lab's switch, nodes and ext."""
    existing = set(netns_list())
    sw = lab.switch_netns
    _ensure_netns(sw, existing)
    if not link_exists(sw, SWITCH_BRIDGE):
        ip("link", "add", SWITCH_BRIDGE, "type", "bridge", netns=sw)
    ip("link", "set", SWITCH_BRIDGE, "up", netns=sw)
    for node in lab.nodes:
        _ensure_host(lab, node.netns, node.name, node.addr, existing)
        # Nodes route between their tasks, the overlay and the ingress network.
        run(["ip", "netns", "exec", node.netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    _ensure_host(lab, lab.ext_netns, EXT, lab.ext_addr, existing)


def is_built(lab: Lab) -> bool:
    """Every namespace of the topology is there (links are checked by build, not here)."""
    have = set(netns_list())
    return {lab.switch_netns, lab.ext_netns, *(n.netns for n in lab.nodes)} <= have


def netns_pids(netns: str) -> list[int]:
    proc = ip("netns", "pids", netns, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def destroy(name_prefix: str) -> None:
    """Delete every namespace named `name_prefix`*, in reverse order of creation: task
    namespaces first, then nodes, ext, and the switch last. Processes must be gone first
    (a namespace lives on, unnamed, while a process is inside it)."""

    def order(ns: str) -> int:
        rest = ns[len(name_prefix) :]
        if rest == "sw":
            return 3
        if rest == EXT:
            return 2
        if rest.startswith("node") and rest[4:].isdigit():
            return 1
        return 0

    errors = []
    for ns in sorted(lab_netns(name_prefix), key=order):
        proc = ip("netns", "del", ns, check=False)
        if proc.returncode != 0 and ns in netns_list():
            errors.append(f"{ns}: {proc.stderr.strip()}")
    if errors:
        raise KernelError("could not delete namespaces: " + "; ".join(errors))
