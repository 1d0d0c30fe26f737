"""Cluster objects in the Docker Engine API's own JSON shapes.

The store keeps Node, Network, Service, Task and Cluster exactly as the swarm API returns them
(swarmkit's objects.proto, as Docker serialises it), so the API hands them out unchanged and
the docker CLI reads them as it reads Docker's. Spec is what the user asked for and shoal never
changes it; everything else is observed or allocated state.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import string
from datetime import UTC, datetime
from typing import Any

from shoal.errors import InvalidArgument

Obj = dict[str, Any]

KINDS = ("cluster", "node", "network", "service", "task")

# Docker's task states, in the order a task moves through them.
TASK_STATES = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting",
               "running", "complete", "shutdown", "failed", "rejected", "remove", "orphaned")
TERMINAL = frozenset({"complete", "shutdown", "failed", "rejected", "remove", "orphaned"})

_ID_ALPHABET = string.ascii_lowercase + string.digits
# swarmkit's rule for object names: a DNS label, also usable as a hostname.
_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?$")
_SERVICE_NAME = re.compile(r"^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$")


def new_id() -> str:
    """25 characters of base36, as swarmkit's identity.NewID."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(25))


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def state_index(state: str) -> int:
    return TASK_STATES.index(state)


def check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{kind} name is required")
    pattern = _SERVICE_NAME if kind == "service" else _NAME
    if len(name) > 63 or not pattern.match(name):
        raise InvalidArgument(
            f"invalid {kind} name {name!r}: use letters, digits and '-' or '_' between them, "
            "at most 63 characters")
    return name


def parse_subnet(text: Any) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(str(text), strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"invalid subnet {text!r}: {exc}") from exc
    if net.version != 4:
        raise InvalidArgument(f"subnet {text}: only IPv4 overlays are supported")
    if net.prefixlen > 29:
        raise InvalidArgument(f"subnet {text} is too small: use a /29 or larger")
    return net  # type: ignore[return-value]


def new_cluster() -> Obj:
    ts = now()
    return {
        "ID": new_id(), "Version": {"Index": 0}, "CreatedAt": ts, "UpdatedAt": ts,
        "Spec": {
            "Name": "default", "Labels": {},
            "Orchestration": {"TaskHistoryRetentionLimit": 5},
            "Raft": {"SnapshotInterval": 10000, "KeepOldSnapshots": 0,
                     "LogEntriesForSlowFollowers": 500, "ElectionTick": 10, "HeartbeatTick": 1},
            "Dispatcher": {"HeartbeatPeriod": 5000000000},
            "CAConfig": {"NodeCertExpiry": 7776000000000000},
            "TaskDefaults": {},
            "EncryptionConfig": {"AutoLockManagers": False},
        },
        "TLSInfo": {"TrustRoot": "", "CertIssuerSubject": "", "CertIssuerPublicKey": ""},
        "RootRotationInProgress": False,
        "DefaultAddrPool": ["10.0.0.0/8"], "SubnetSize": 24, "DataPathPort": 4789,
    }


def new_node(node_id: str, hostname: str, addr: str, role: str, resources: Obj) -> Obj:
    ts = now()
    node: Obj = {
        "ID": node_id, "Version": {"Index": 0}, "CreatedAt": ts, "UpdatedAt": ts,
        "Spec": {"Labels": {}, "Role": role, "Availability": "active"},
        "Description": {
            "Hostname": hostname,
            "Platform": {"Architecture": "x86_64", "OS": "linux"},
            "Resources": resources,
            "Engine": {"EngineVersion": "shoal"},
        },
        "Status": {"State": "ready", "Addr": addr},
    }
    return node


def network_resource(net: Obj) -> Obj:
    """A stored swarm network in the shape of GET /networks (Docker's NetworkResource)."""
    spec = net["Spec"]
    configs = net.get("IPAMOptions", {}).get("Configs", [])
    return {
        "Name": spec["Name"], "Id": net["ID"], "Created": net["CreatedAt"], "Scope": "swarm",
        "Driver": spec.get("DriverConfiguration", {}).get("Name", "overlay"),
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None,
                 "Config": [{"Subnet": c["Subnet"], "Gateway": c["Gateway"]} for c in configs]},
        "Internal": bool(spec.get("Internal")), "Attachable": bool(spec.get("Attachable")),
        "Ingress": bool(spec.get("Ingress")), "ConfigFrom": {"Network": ""},
        "ConfigOnly": False, "Containers": {},
        # What the user asked for (encrypted) and what was allocated (the VNI), as Docker.
        "Options": {**spec.get("DriverConfiguration", {}).get("Options", {}),
                    **net.get("DriverState", {}).get("Options", {})},
        "Labels": dict(spec.get("Labels") or {}),
    }


def task_name(task: Obj, service_name: str) -> str:
    return f"{service_name}.{task['Slot']}"


def task_command(spec: Obj) -> list[str]:
    container = spec.get("ContainerSpec") or {}
    return list(container.get("Command") or []) + list(container.get("Args") or [])
