"""What a lab is called and where its pieces live, computed from its name alone (no I/O).

Every namespace, file and process of a lab carries the lab's name, so that `lab down` can
remove exactly what the lab made. Lab names are [a-z0-9]{1,8}: with no dash in a name, the
prefix "shoal-<lab>-" of one lab can never match a namespace of another lab.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shoal.errors import InvalidArgument

NAME_RE = re.compile(r"[a-z0-9]{1,8}")
DEFAULT_NAME = "shoal"
MAX_NODES = 200

# 198.18.0.0/15 is set aside for network benchmarks (RFC 2544): it is never routed anywhere.
UNDERLAY_NET = "198.18.0"
UNDERLAY_PREFIXLEN = 24
EXT_ADDR = "198.18.0.2"
MANAGER_PORT = 2377

RUN_ROOT = Path("/run/shoal")
STATE_ROOT = Path("/var/lib/shoal")
NETNS_RUN_DIR = Path("/run/netns")  # where `ip netns add` mounts named namespaces
NETNS_ETC = Path("/etc/netns")  # `ip netns exec` binds /etc/netns/<ns>/* over /etc/*

SWITCH_BRIDGE = "br0"  # the bridge inside the switch namespace
HOST_LINK = "eth0"  # each node's and ext's end of its veth to the switch
EXT = "ext"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidArgument(f"invalid lab name {name!r}: use 1 to 8 characters from a-z and 0-9")
    return name


def check_nodes(nodes: int) -> int:
    if not isinstance(nodes, int) or isinstance(nodes, bool) or not 1 <= nodes <= MAX_NODES:
        raise InvalidArgument(f"invalid node count {nodes!r}: use 1 to {MAX_NODES}")
    return nodes


def prefix(name: str) -> str:
    """The prefix of every namespace of lab `name`, task namespaces made by agents included."""
    return f"shoal-{check_name(name)}-"


def node_addr(index: int) -> str:
    return f"{UNDERLAY_NET}.{10 + index}"


@dataclass
class LabNode:
    name: str  # "node1"
    netns: str  # "shoal-<lab>-node1"
    addr: str  # underlay address, "198.18.0.11"
    index: int = 0  # 1 for node1


@dataclass
class Lab:
    name: str
    nodes: list[LabNode]
    ext_netns: str
    ext_addr: str
    manager_addr: str  # "198.18.0.11:2377"
    docker_host: str  # "unix:///run/shoal/<lab>/docker.sock"
    state_dir: Path  # /var/lib/shoal/<lab>
    run_dir: Path  # /run/shoal/<lab>
    python: str = field(default=sys.executable)  # runs `-m shoal manager|agent`

    @classmethod
    def make(cls, name: str = DEFAULT_NAME, nodes: int = 3, python: str | None = None) -> Lab:
        check_name(name)
        check_nodes(nodes)
        pre = prefix(name)
        run_dir = RUN_ROOT / name
        return cls(
            name=name,
            nodes=[
                LabNode(name=f"node{i}", netns=f"{pre}node{i}", addr=node_addr(i), index=i)
                for i in range(1, nodes + 1)
            ],
            ext_netns=f"{pre}{EXT}",
            ext_addr=EXT_ADDR,
            manager_addr=f"{node_addr(1)}:{MANAGER_PORT}",
            docker_host=f"unix://{run_dir / 'docker.sock'}",
            state_dir=STATE_ROOT / name,
            run_dir=run_dir,
            python=python or sys.executable,
        )

    @property
    def prefix(self) -> str:
        return prefix(self.name)

    @property
    def switch_netns(self) -> str:
        return f"{self.prefix}sw"

    @property
    def docker_socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def manager_node(self) -> LabNode:
        return self.nodes[0]

    def node(self, node: LabNode | str | int) -> LabNode:
        """Look a node up by LabNode, name ("node2") or index (2)."""
        if isinstance(node, LabNode):
            node = node.name
        for n in self.nodes:
            if node in (n.name, n.index):
                return n
        raise InvalidArgument(f"lab {self.name} has no node {node!r}")

    def node_state_dir(self, node: LabNode | str | int) -> Path:
        return self.state_dir / self.node(node).name

    @property
    def manager_state_dir(self) -> Path:
        return self.state_dir / "manager"

    def log_file(self, proc: str) -> Path:
        """Log of process `proc`: "manager" or a node name."""
        return self.state_dir / f"{proc}.log"

    def pid_file(self, proc: str) -> Path:
        return self.run_dir / f"{proc}.pid"

    @property
    def config_file(self) -> Path:
        return self.run_dir / "lab.json"

    @property
    def procs(self) -> list[str]:
        """Every process name of the lab, in start order."""
        return ["manager", *(n.name for n in self.nodes)]
