"""The egress gateway: how a task reaches the outside world (Docker's docker_gwbridge).

Per node one bridge, `shgw0`, holding the node's gateway address 172.18.0.1/16. A task on at
least one network that is not `--internal` (the ingress network counts: it is not internal)
gets one more veth, its last `eth<n>`, on that bridge, with a node-local address and its
main-table default route via 172.18.0.1; the node masquerades that traffic out of its underlay
interface (firewall.py). A task whose networks are all internal gets no such veth and no
default route: it has no way out at all.

Why one /16 on every node, the same one: these addresses never leave the node. Traffic from
the bridge is masqueraded on every way out (the underlay, and the ingress bridge when a task
calls a published port through a node address), and nothing routes to 172.18.0.0/16 from
anywhere else, so two nodes holding the same task address cannot meet. Only the tasks of one
node must differ, and the agent alone hands them out: no manager involved.

Why the address is derived from the task id: it is the same after an agent restart (the
Dataplane keeps what it finds in the task's namespace first) and needs no state file. The
/16 has 65533 free host addresses; a rare clash between two local tasks probes to the next.

The bridge's ports are isolated (IFLA_BRPORT_ISOLATED): two tasks on this bridge cannot
exchange a frame, even if they are on no network in common; they only reach the node. The
node's forward filter says the same at the IP layer (needed when br_netfilter is loaded).
"""

from __future__ import annotations

import hashlib
import ipaddress

from shoal.errors import KernelError
from shoal.model.view import NodeView, TaskEntry

BRIDGE = "shgw0"  # the node's gateway bridge
NETWORK = ipaddress.IPv4Network("172.18.0.0/16")  # as docker_gwbridge; node-local
ADDR = "172.18.0.1"  # the node's address on BRIDGE: every task's default gateway
PREFIXLEN = NETWORK.prefixlen
VXLAN_OVERHEAD = 50  # the gateway path is the underlay's, not the overlay's: no VXLAN header

_FIRST = int(NETWORK.network_address) + 2  # .0.0 is the network, .0.1 the node
_SIZE = NETWORK.num_addresses - 3  # and the last is broadcast


def needs_egress(task: TaskEntry, view: NodeView) -> bool:
    """A task on at least one network that is not internal has a way out."""
    nets = view["networks"]
    return any(net_id in nets and not nets[net_id].get("internal") for net_id in task["addrs"])


def needed(view: NodeView) -> bool:
    """The node holds the bridge while any of its tasks needs it."""
    return any(needs_egress(t, view) for t in view["tasks"].values())


def preferred(task_id: str) -> int:
    """The offset in the pool a task's address starts from: a hash of its id."""
    return int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:4], "big") % _SIZE


def in_pool(ip: str) -> bool:
    try:
        offset = int(ipaddress.IPv4Address(ip)) - _FIRST
    except ValueError:
        return False
    return 0 <= offset < _SIZE


def allocate(task_id: str, taken: set[str]) -> str:
    """The first free address from the task's preferred one on (pure)."""
    start = preferred(task_id)
    for step in range(_SIZE):
        ip = str(ipaddress.IPv4Address(_FIRST + (start + step) % _SIZE))
        if ip not in taken:
            return ip
    raise KernelError(f"no gateway address left in {NETWORK} for task {task_id}")


class Addresses:
    """The gateway addresses of this node's tasks, kept by the Dataplane."""

    def __init__(self) -> None:
        self._of: dict[str, str] = {}

    def claim(self, task_id: str, found: str | None) -> str:
        """The task's address: the one it has, else the one found in its namespace (after an
        agent restart), else a new one. Never one another local task holds."""
        if task_id in self._of:
            return self._of[task_id]
        taken = {ip for other, ip in self._of.items() if other != task_id}
        ip = found if found and in_pool(found) and found not in taken else allocate(
            task_id, taken)
        self._of[task_id] = ip
        return ip

    def release(self, task_id: str) -> None:
        self._of.pop(task_id, None)

    def clear(self) -> None:
        self._of.clear()
