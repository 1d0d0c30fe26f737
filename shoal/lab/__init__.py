"""A cluster of N nodes on one machine, in network namespaces (like kind for Kubernetes).

`lab_up(name, nodes)` builds, all inside namespaces named "shoal-<lab>-*":

    shoal-<lab>-sw      a switch: bridge br0, one port per host
    shoal-<lab>-nodeI   a node: eth0 198.18.0.(10+I)/24, runs an agent; node1 runs the manager
    shoal-<lab>-ext     the outside world: eth0 198.18.0.2/24, a DNS server (dnsmasq) on :53

then starts dnsmasq in ext (outside names such as www.outside.test, from a hosts file; every
agent gets it as its DNS upstream), `python -m shoal manager` in node1 and
`python -m shoal agent` in every node, and
waits until the manager's Docker API (unix:///run/shoal/<lab>/docker.sock) lists every node as
ready. Nothing is added to the machine's own namespace except files under /run/shoal/<lab>
(pids, the docker socket) and /var/lib/shoal/<lab> (state, logs); there is no default route,
so no lab packet can leave the machine. `lab_down(name)` removes all of it, by the lab's pid
files and name prefix only.

Modules: layout (names, addresses, paths; no I/O), topology (namespaces and links), processes
(start and stop the manager and agents), lifecycle (up, status, down); the API is asked
through shoal.client.
"""

from shoal.lab.layout import DEFAULT_NAME, Lab, LabNode, check_name
from shoal.lab.lifecycle import lab_down, lab_status, lab_up, wait_ready
from shoal.lab.processes import (
    pid_of,
    start_agent,
    start_dnsmasq,
    start_manager,
    stop_agent,
    stop_dnsmasq,
    stop_manager,
)

__all__ = [
    "DEFAULT_NAME",
    "Lab",
    "LabNode",
    "check_name",
    "lab_down",
    "lab_status",
    "lab_up",
    "pid_of",
    "start_agent",
    "start_dnsmasq",
    "start_manager",
    "stop_agent",
    "stop_dnsmasq",
    "stop_manager",
    "wait_ready",
]
