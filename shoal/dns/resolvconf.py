"""resolv.conf files: the one each task sees, and the node's own (the default upstreams).

A task's file is /etc/netns/<task namespace>/resolv.conf: `ip netns exec`, which starts every
task process, binds it over /etc/resolv.conf. It names only 127.0.0.11, with `options ndots:0`
(as Docker writes it): a name with no dot is asked as is, not first with every search domain.
The task's own --dns-search and --dns-option go in too; its --dns servers do not: they are
the resolver's upstreams for that task, so cluster names keep working.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path

NETNS_ETC = Path("/etc/netns")
RESOLVER_ADDR = "127.0.0.11"
NODE_RESOLV_CONF = Path("/etc/resolv.conf")


def render(search: list[str] | None = None, options: list[str] | None = None) -> str:
    lines = [f"nameserver {RESOLVER_ADDR}"]
    if search:
        lines.append("search " + " ".join(search))
    opts = list(options or [])
    if not any(o.startswith("ndots:") for o in opts):
        opts.insert(0, "ndots:0")
    lines.append("options " + " ".join(opts))
    return "\n".join(lines) + "\n"


def path(netns: str) -> Path:
    return NETNS_ETC / netns / "resolv.conf"


def write(netns: str, search: list[str] | None = None, options: list[str] | None = None,
          root: Path = NETNS_ETC) -> Path:
    """Write the task's resolv.conf (atomically: a task starting now reads all or nothing)."""
    target = root / netns / "resolv.conf"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(render(search, options))
    os.replace(tmp, target)
    return target


def remove(netns: str, root: Path = NETNS_ETC) -> None:
    """Remove /etc/netns/<netns> and everything shoal put there. No error if absent."""
    shutil.rmtree(root / netns, ignore_errors=True)


def remove_stale(prefix: str, netns_dir: Path = Path("/run/netns"),
                 root: Path = NETNS_ETC) -> list[str]:
    """Remove the /etc/netns/<prefix>* directories whose namespace is gone (left by an agent
    that was killed). A live namespace's directory is kept: it may be another node's."""
    gone = []
    try:
        entries = sorted(os.listdir(root))
    except FileNotFoundError:
        return gone
    for name in entries:
        if name.startswith(prefix) and not (netns_dir / name).exists():
            remove(name, root)
            gone.append(name)
    return gone


def nameservers(text: str) -> list[str]:
    """The `nameserver` addresses of a resolv.conf, loopback ones left out (on a node they mean
    a local stub such as systemd-resolved, which tasks in other namespaces cannot reach)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                if ipaddress.ip_address(parts[1].split("%")[0]).is_loopback:
                    continue
            except ValueError:
                continue
            out.append(parts[1])
    return out


def node_nameservers(path: Path = NODE_RESOLV_CONF) -> list[str]:
    try:
        return nameservers(path.read_text())
    except OSError:
        return []
