"""The per-node overlay network in the kernel, programmed from a NodeView with pyroute2.

How it works:

- Per overlay network: a bridge `shbr<vni>` and a VXLAN device `shvx<vni>` (dstport 4789, local
  = the node's underlay address, learning off, ARP proxy on) enslaved to it, MTU underlay - 50.
- No flooding: for every endpoint on another node, on a network this node has, a static FDB
  entry `<mac> dst <peer underlay addr> self permanent` and a neighbour entry `<ip> lladdr <mac>
  nud permanent` on the VXLAN device. A local ARP request flooded by the bridge reaches the VXLAN
  port, whose proxy answers it from the neighbour table; it never crosses the underlay.
- Per task: a named namespace `<prefix><task id[:12]>` with `lo` up and one veth per network
  (sorted by network id): `eth<i>` inside with the task's MAC and address, `shv<id[:8]><i>` on
  the node as a port of the network's bridge.
- Desired state is rendered by pure functions (plan.py); the kernel is read back and only the
  difference is written (networks.py, tasks.py), so every call is idempotent and repairs drift,
  also after an agent restart. `Dataplane.last_changes` counts the writes of the last call.
- Namespaces are made and entered by short-lived threads (namespaces.py), not by forking or by
  `ip`: one netlink socket in the node namespace is reused; a task namespace gets one socket per
  attach. The agent must only switch its network namespace (`nsenter --net=...`), not run under
  `ip netns exec`, whose private mount namespace would hide the task namespaces it pins.

- Egress: a node bridge `shgw0` (172.18.0.1/16) and one more veth per task that is on a
  network other than `--internal`; the node filter (firewall.py, `inet shoal_filter`) keeps
  networks apart, lets in from outside only published and mesh ports (VXLAN and the control
  plane from cluster peers only) and masquerades egress. See docs/isolation.md.

- Encrypted networks: their VXLAN device uses the node's tunnel address and port 4790, FDB
  entries point at the peers' tunnel addresses, MTU 80 smaller; the node's one wireguard-go
  interface (wireguard.py, configured over UAPI by wg_uapi.py) carries it. A node that cannot
  encrypt builds no encrypted network. See docs/encryption.md.

Files: names.py (every name), plan.py (pure), namespaces.py (netns), links.py (netlink reads
and writes, errors -> KernelError), networks.py (bridges, VXLAN, FDB, ARP), tasks.py (task
namespaces and veths), gateway.py (egress addresses), overlay.py (the Dataplane object),
firewall.py (the node filter), lb.py and ingress.py (nft), wireguard.py and wg_uapi.py
(encrypted overlays), __main__.py (JSON-lines driver).
"""

from shoal.dataplane.overlay import Dataplane
from shoal.dataplane.plan import FdbEntry, TaskLink, plan_fdb, plan_networks, plan_task_links

__all__ = ["Dataplane", "FdbEntry", "TaskLink", "plan_fdb", "plan_networks", "plan_task_links"]
