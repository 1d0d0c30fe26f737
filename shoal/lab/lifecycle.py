"""Bring a lab up, find it, take it down.

Up, in order: topology (idempotent), ext's DNS server, `shoal init` (the cluster CA), manager,
`shoal join` of each node not joined yet, agents, then wait until the manager's Docker API
lists every node as ready. Down, in reverse: agents and ext's DNS server
(together), manager, any process still in a lab namespace, the namespaces, then the lab's
files. Down trusts only what the lab owns: its
pid files (checked against each process's command line) and its "shoal-<lab>-" prefix.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time

from shoal import preflight
from shoal.client import Client
from shoal.errors import Conflict, KernelError, ShoalError
from shoal.lab import processes, topology
from shoal.lab.layout import (
    DEFAULT_NAME,
    NETNS_ETC,
    RUN_ROOT,
    STATE_ROOT,
    Lab,
    check_name,
    check_nodes,
    prefix,
)


def _write_config(lab: Lab) -> None:
    lab.run_dir.mkdir(parents=True, exist_ok=True)
    lab.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = lab.config_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"name": lab.name, "nodes": len(lab.nodes), "python": lab.python}))
    tmp.replace(lab.config_file)


def lab_status(name: str = DEFAULT_NAME) -> Lab | None:
    """The lab called `name` if any of its namespaces or its run directory exists, else None.
    It may be partly up: see topology.is_built and processes.pid_of."""
    check_name(name)
    shape = Lab.make(name, 1)
    try:
        config = json.loads(shape.config_file.read_text())
        return Lab.make(name, int(config["nodes"]), config.get("python") or sys.executable)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    pre = prefix(name)
    names = [ns[len(pre) :] for ns in topology.lab_netns(pre)]
    if not names and not shape.run_dir.exists():
        return None
    indexes = [int(n[4:]) for n in names if n.startswith("node") and n[4:].isdigit()]
    return Lab.make(name, max(indexes, default=1))


def wait_ready(lab: Lab, wait: float) -> None:
    """Wait until GET /nodes lists as many ready nodes as the lab has; fail early if one of
    the lab's processes has exited."""
    deadline = time.monotonic() + wait
    want = len(lab.nodes)
    last = "the manager has not answered yet"
    while True:
        dead = [p for p in lab.procs if processes.pid_of(lab, p) is None]
        if dead:
            raise ShoalError(_failure(lab, f"{', '.join(dead)} exited"))
        try:
            nodes = Client(lab.docker_host, timeout=2.0).get("/nodes")
            ready = [n for n in nodes if (n.get("Status") or {}).get("State") == "ready"]
            if len(ready) >= want:
                return
            last = f"{len(ready)} of {want} nodes ready"
        except (ShoalError, ValueError, AttributeError) as exc:
            last = f"GET /nodes: {exc}"
        if time.monotonic() >= deadline:
            raise ShoalError(_failure(lab, f"not ready after {wait:g}s ({last})"))
        time.sleep(0.2)


def _failure(lab: Lab, what: str) -> str:
    parts = [
        f"lab {lab.name}: {what}. The lab is left up for inspection; "
        f"`shoal lab down --name {lab.name}` removes it."
    ]
    for proc in lab.procs:
        tail = processes.log_tail(lab, proc)
        if tail:
            parts.append(f"==> {lab.log_file(proc)} <==\n{tail}")
    return "\n".join(parts)


def lab_up(
    name: str = DEFAULT_NAME,
    nodes: int = 3,
    python: str = sys.executable,
    wait: float = 30.0,
    start_processes: bool = True,
    cert_expiry: str | None = None,
) -> Lab:
    """Build lab `name` with `nodes` nodes: `shoal init` on node1, its manager, `shoal join`
    from every other node, the agents; then wait until every node is ready. Idempotent: what
    exists is kept, what is missing (a namespace, a process that died) is made again. With
    start_processes=False only the topology is built. `cert_expiry` ("30s") sets the node
    certificate lifetime at init; below one hour it needs SHOAL_TEST_SHORT_CERTS=1."""
    check_name(name)
    check_nodes(nodes)
    preflight.check(preflight.DEFAULT_TOOLS if start_processes else ("ip", "sysctl"))
    existing = lab_status(name)
    if existing is not None and len(existing.nodes) != nodes:
        raise Conflict(
            f"lab {name} is up with {len(existing.nodes)} nodes, not {nodes}: "
            f"run `shoal lab down --name {name}` first"
        )
    lab = Lab.make(name, nodes, python)
    _write_config(lab)
    topology.build(lab)
    if start_processes:
        processes.start_dnsmasq(lab)
        processes.init_cluster(lab, cert_expiry)
        processes.start_manager(lab)
        missing = [n for n in lab.nodes if not processes.joined(lab, n)]
        if missing:
            token = _worker_token(lab, wait)
            for node in missing:
                processes.join_node(lab, node, token)
        for node in lab.nodes:
            processes.start_agent(lab, node)
        wait_ready(lab, wait)
    return lab


def _worker_token(lab: Lab, wait: float) -> str:
    """The worker join token, from the manager's local socket once it answers."""
    deadline = time.monotonic() + wait
    while True:
        if processes.pid_of(lab, "manager") is None:
            raise ShoalError(_failure(lab, "the manager exited"))
        try:
            return Client(lab.docker_host, timeout=2.0).get("/swarm")["JoinTokens"]["Worker"]
        except ShoalError as exc:
            if time.monotonic() >= deadline:
                raise ShoalError(_failure(lab, f"the manager did not answer: {exc}")) from exc
        time.sleep(0.05)


def _kill_netns_processes(name_prefix: str, timeout: float = 5.0) -> None:
    """SIGKILL whatever still runs inside the lab's namespaces (task processes, helpers)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for ns in topology.lab_netns(name_prefix) for p in topology.netns_pids(ns)]
        pids = [p for p in pids if p != os.getpid()]
        if not pids:
            return
        if time.monotonic() >= deadline:
            raise KernelError(f"processes {pids} survived SIGKILL in {name_prefix}* namespaces")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def lab_down(name: str = DEFAULT_NAME) -> None:
    """Remove everything lab `name` made. Nothing there is not an error."""
    check_name(name)
    lab = lab_status(name) or Lab.make(name, 1)
    pre = lab.prefix
    recorded = sorted(p.stem for p in lab.run_dir.glob("*.pid")) if lab.run_dir.exists() else []
    processes.stop(lab, [p for p in recorded if p != "manager"])
    processes.stop(lab, ["manager"])
    _kill_netns_processes(pre)
    topology.destroy(pre)
    for path in (lab.run_dir, lab.state_dir, *NETNS_ETC.glob(f"{pre}*")):
        shutil.rmtree(path, ignore_errors=True)
    for root in (RUN_ROOT, STATE_ROOT):
        try:
            root.rmdir()  # only when no other lab is left
        except OSError:
            pass
    left = [str(p) for p in (lab.run_dir, lab.state_dir) if p.exists()]
    left += topology.lab_netns(pre)
    if left:
        raise KernelError(f"lab {name}: could not remove {', '.join(left)}")
