"""The NodeView: everything one node knows of the cluster network, and what it must run.

The manager computes one per node; the agent receives it (a full snapshot after connecting,
then deltas) and hands it to the dataplane and, later, the DNS server. Both render from this one
value, so they cannot disagree. A node only ever holds the networks it has tasks on.

Everything here is plain JSON (dicts keyed by id) so a delta is simply, per section, the entries
that changed and the ids that went away.
"""

from __future__ import annotations

from typing import Any, TypedDict

SECTIONS = ("networks", "peers", "services", "endpoints", "tasks", "keys")
# Tunnel addresses of encrypted overlays: one /32 per node, handed out by the manager, held by
# the node's WireGuard interface (RFC 6598 space, away from the overlays' 10.0.0.0/8).
TUNNEL_NET = "100.64.0.0/16"


class NetworkEntry(TypedDict):
    id: str
    name: str
    subnet: str  # "10.0.1.0/24"
    gateway: str  # "10.0.1.1": reserved, never given to a task
    vni: int  # VXLAN id, 4096 and up
    internal: bool
    encrypted: bool
    ingress: bool  # the routing mesh's network: every node is on it; no name service there


class PeerEntry(TypedDict):
    id: str  # node id
    name: str
    addr: str  # underlay address, "198.18.0.12"
    ingress_addr: str  # the node's own address on the ingress network, "" if none yet
    # Encrypted overlays (docs/encryption.md): the node's WireGuard public key (base64, ""
    # while it cannot encrypt), its WireGuard UDP port and its tunnel address (a /32 of
    # TUNNEL_NET, from the manager), which the VXLAN of encrypted networks runs between.
    wg_key: str
    wg_port: int
    tunnel_addr: str


class KeyEntry(TypedDict):
    """A cluster-wide secret from the manager: "psk", WireGuard's preshared key (base64), set
    on every peer of the node's WireGuard interface; it changes at each rotation."""

    id: str
    key: str
    generation: int  # 1 for the first key, +1 per rotation


class ServiceEntry(TypedDict):
    id: str
    name: str
    endpoint_mode: str  # "vip" or "dnsrr"
    vips: dict[str, str]  # network id -> "10.0.1.2"
    aliases: dict[str, list[str]]  # network id -> extra names on that network
    ports: list[dict[str, Any]]  # Endpoint.Ports: {Protocol, TargetPort, PublishedPort, ...}
    labels: dict[str, str]  # Spec.Labels (shoal.http.host routes it on the HTTP mesh)


class Attachment(TypedDict):
    ip: str  # "10.0.1.3"
    prefixlen: int
    mac: str  # "02:42:0a:00:01:03"


class EndpointEntry(TypedDict):
    """A task as the network sees it: any task, on any node, on a network this node has."""

    id: str
    name: str  # "web.1"
    service_id: str
    node_id: str
    state: str  # Docker task state: "running", ...
    healthy: bool
    addrs: dict[str, Attachment]  # network id -> address on it


class HealthCheck(TypedDict):
    """ContainerSpec.Healthcheck in seconds; test is Docker's ["CMD", ...] or ["CMD-SHELL", s]."""

    test: list[str]
    interval: float
    timeout: float
    retries: int
    start_period: float


class TaskEntry(TypedDict):
    """A task assigned to this node: what the agent must run."""

    id: str
    name: str  # "web.1"
    service_id: str
    service_name: str
    slot: int
    desired_state: str  # "running" or "shutdown"
    image: str
    command: list[str]  # ContainerSpec.Command + Args; empty means the task must fail
    env: list[str]  # "K=V"
    dir: str
    dns: dict[str, list[str]]  # ContainerSpec.DNSConfig: nameservers, search, options
    healthcheck: HealthCheck | None
    stop_grace: float  # seconds between SIGTERM and SIGKILL
    addrs: dict[str, Attachment]  # network id -> address on it


class NodeView(TypedDict):
    node: PeerEntry
    revision: int
    networks: dict[str, NetworkEntry]
    peers: dict[str, PeerEntry]
    services: dict[str, ServiceEntry]
    endpoints: dict[str, EndpointEntry]
    tasks: dict[str, TaskEntry]
    keys: dict[str, KeyEntry]  # only on a node that has an encrypted network


def empty_view(node: PeerEntry) -> NodeView:
    return NodeView(node=node, revision=0, networks={}, peers={}, services={}, endpoints={},
                    tasks={}, keys={})


def diff(old: NodeView, new: NodeView) -> dict[str, Any] | None:
    """The delta from old to new: per section, {"set": {id: entry}, "del": [id]}. None if equal."""
    delta: dict[str, Any] = {}
    for section in SECTIONS:
        # .get: a view from before a section existed lacks it
        before, after = old.get(section, {}), new.get(section, {})  # type: ignore[misc]
        changed = {k: v for k, v in after.items() if before.get(k) != v}
        gone = [k for k in before if k not in after]
        if changed or gone:
            delta[section] = {"set": changed, "del": gone}
    if not delta:
        return None
    delta["revision"] = new["revision"]
    return delta


def apply_delta(view: NodeView, delta: dict[str, Any]) -> NodeView:
    """A new view: view with delta applied. The input is left as it was."""
    out: dict[str, Any] = dict(view)
    for section in SECTIONS:
        change = delta.get(section)
        if not change:
            continue
        # .copy(), not dict(): CPython clones the hash table in one go when up to a third of
        # its slots are deleted entries, dict() only when none is; so after a delta that
        # removed an entry, dict() would rebuild entry by entry (12.8 ms against 1.6 ms for
        # 90,000 endpoints, docs/benchmarks.md).
        entries = view.get(section, {}).copy()  # type: ignore[misc]
        for key in change["del"]:
            entries.pop(key, None)
        entries.update(change["set"])
        out[section] = entries
    out["revision"] = delta.get("revision", view["revision"])
    return out  # type: ignore[return-value]


def mac_for(ip: str) -> str:
    """Docker's scheme: 02:42 then the four bytes of the IPv4 address."""
    parts = [int(p) for p in ip.split(".")]
    return "02:42:" + ":".join(f"{p:02x}" for p in parts)


def without_keys(view: NodeView) -> NodeView:
    """The view minus its secrets, for helpers that need no key (the DNS resolver)."""
    if not view.get("keys"):
        return view
    return {**view, "keys": {}}  # type: ignore[typeddict-item]


def encrypted_peers(view: NodeView, node_id: str) -> set[str]:
    """The nodes this node must reach through WireGuard: every other node with an endpoint on
    an encrypted network of this node's view."""
    encrypted = {i for i, n in view["networks"].items() if n.get("encrypted")}
    return {ep["node_id"] for ep in view["endpoints"].values()
            if ep["node_id"] != node_id and encrypted & set(ep["addrs"])}
