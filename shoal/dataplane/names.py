"""Every name the dataplane gives to a kernel object, declared once.

Linux interface names are at most 15 characters (IFNAMSIZ - 1).
"""

from __future__ import annotations

import hashlib

from shoal.model.view import TUNNEL_NET  # noqa: F401  (declared with the view it travels in)

BRIDGE_PREFIX = "shbr"  # shbr<vni>: one bridge per overlay network
VXLAN_PREFIX = "shvx"  # shvx<vni>: its VXLAN device, a port of the bridge
HOST_VETH_PREFIX = "shv"  # shv<task id[:8]><index>: node side of a task's veth
TASK_IFNAME = "eth"  # eth<index> inside the task namespace
VXLAN_PORT = 4789  # IANA port; the kernel's default (8472) is not what other hosts speak
# Encrypted overlays (wireguard.py): their VXLAN runs between the nodes' tunnel addresses on
# a port of its own, so that the node filter can tell it from cleartext VXLAN by port alone.
ENCRYPTED_VXLAN_PORT = 4790
WIREGUARD_PORT = 51820  # WireGuard's customary port; `shoal agent --wireguard-port`
WIREGUARD_PREFIX = "shwg"  # shwg<10 hex digits of the state dir's hash>: the node's interface
WIREGUARD_OVERHEAD = 80  # outer IPv6 40 (IPv4 20) + UDP 8 + WireGuard 32: wireguard-go's 1420
TASK_ID_LEN = 12  # task namespace: <prefix><task id[:12]>
OWNER_PREFIX = "shoal:"  # lo's alias in a task namespace: shoal:<node id> of the owning node


def wireguard_ifname(state_dir: str) -> str:
    """The node's WireGuard interface. wireguard-go's control socket is
    /var/run/wireguard/<ifname>.sock on the filesystem every namespace shares, so the name must
    differ between the nodes of a lab (one machine); an agent's state dir does (it holds the
    node's identity and key), and stays the same across restarts."""
    return WIREGUARD_PREFIX + hashlib.sha256(state_dir.encode()).hexdigest()[:10]


def bridge_name(vni: int) -> str:
    return f"{BRIDGE_PREFIX}{vni}"


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni}"


def host_veth_name(task_id: str, index: int) -> str:
    return f"{HOST_VETH_PREFIX}{task_id[:8]}{index}"


def task_ifname(index: int) -> str:
    return f"{TASK_IFNAME}{index}"


def netns_name(prefix: str, task_id: str) -> str:
    return f"{prefix}{task_id[:TASK_ID_LEN]}"


def task_id_of(prefix: str, netns: str) -> str | None:
    """The task id prefix a namespace name carries, or None if it is not a task namespace."""
    if not netns.startswith(prefix):
        return None
    rest = netns[len(prefix):]
    if len(rest) != TASK_ID_LEN or not rest.isalnum():
        return None
    return rest


def vni_of(ifname: str, prefix: str) -> int | None:
    """The VNI in shbr<vni>/shvx<vni>; callers also check the link kind (a host veth of a task
    whose id starts with x and digits also starts with shvx)."""
    if not ifname.startswith(prefix):
        return None
    rest = ifname[len(prefix):]
    return int(rest) if rest.isdigit() else None


def owner_alias(node_id: str) -> str:
    return f"{OWNER_PREFIX}{node_id}"
