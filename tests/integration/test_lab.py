"""The lab itself: its wiring, its processes, and that `lab down` leaves nothing behind.

Processes here are a stand-in for `python -m shoal manager|agent` (FAKE_SHOAL below): a
manager that lists the agents connected to it over the underlay as ready nodes, and agents that
connect to it and leave a stray process behind in a task namespace, so that lab down has to
find it by the lab's prefix.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import preflight
from shoal.client import Client
from shoal.errors import Conflict, InvalidArgument, ShoalError, Unavailable
from shoal.lab import (
    Lab,
    lab_down,
    lab_status,
    lab_up,
    pid_of,
    start_manager,
    stop_manager,
    wait_ready,
)
from shoal.lab.layout import NETNS_ETC, RUN_ROOT, STATE_ROOT
from shoal.lab.topology import lab_netns, netns_list

root = pytest.mark.root
PORT = 7070


def unique_name() -> str:
    return "t" + secrets.token_hex(2)  # as conftest's labs: valid, and no one else's


def in_netns(netns: str, code: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[2].encode())
    c.close()
"""


class Listeners:
    """A TCP server in each given namespace answering its own label."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def add(self, netns: str, label: str, port: int = PORT) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", LISTENER, str(port), label],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    ls = Listeners()
    try:
        yield ls
    finally:
        ls.close()


def connect_all(netns: str, addrs: list[str], port: int = PORT) -> dict[str, str]:
    """From inside `netns`, what each addr:port answers, or the error."""
    code = f"""
import json, socket
out = {{}}
for addr in {addrs!r}:
    try:
        with socket.create_connection((addr, {port}), timeout=3) as s:
            out[addr] = s.recv(100).decode()
    except OSError as exc:
        out[addr] = "error: " + (exc.strerror or type(exc).__name__)
print(json.dumps(out))
"""
    proc = in_netns(netns, code)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out)}


def assert_gone(name: str) -> None:
    assert lab_netns(f"shoal-{name}-") == []
    assert not (RUN_ROOT / name).exists()
    assert not (STATE_ROOT / name).exists()
    assert list(NETNS_ETC.glob(f"shoal-{name}-*")) == []
    assert lab_status(name) is None


@pytest.fixture(scope="module")
def topo() -> Iterator[tuple[Lab, set[str]]]:
    """A 3-node lab without processes, and the root namespace's links from before it."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    before = root_links()
    name = unique_name()
    try:
        yield lab_up(name, nodes=3, start_processes=False), before
    finally:
        lab_down(name)


# --- names -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "Shoal", "a-b", "toolong12", "a/b", "a.b", "x y", "ü"])
def test_bad_lab_name_refused(bad: str) -> None:
    for call in (lambda: lab_up(bad, start_processes=False), lambda: lab_down(bad)):
        with pytest.raises(InvalidArgument, match="invalid lab name"):
            call()
    with pytest.raises(InvalidArgument):
        lab_status(bad)


def test_lab_shape() -> None:
    lab = Lab.make("abc", 2)
    assert [(n.name, n.netns, n.addr) for n in lab.nodes] == [
        ("node1", "shoal-abc-node1", "198.18.0.11"),
        ("node2", "shoal-abc-node2", "198.18.0.12"),
    ]
    assert (lab.ext_netns, lab.ext_addr) == ("shoal-abc-ext", "198.18.0.2")
    assert lab.manager_addr == "198.18.0.11:2377"
    assert lab.docker_host == "unix:///run/shoal/abc/docker.sock"
    assert (str(lab.state_dir), str(lab.run_dir)) == ("/var/lib/shoal/abc", "/run/shoal/abc")


# --- preflight ---------------------------------------------------------------------------


def test_preflight_names_the_missing_package() -> None:
    with pytest.raises(Unavailable, match=r"missing tool: nft .*apt-get install -y nftables"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(preflight.shutil, "which", lambda t: None if t == "nft" else "/x/" + t)
            preflight.check_tools(["ip", "nft"])


def test_preflight_refuses_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    with pytest.raises(Unavailable, match="needs root"):
        preflight.check()


@root
def test_preflight_passes_here_and_leaves_nothing() -> None:
    preflight.check()
    assert [ns for ns in netns_list() if ns.startswith("shoal-preflight-")] == []


# --- topology ------------------------------------------------------------------------------


@root
def test_nodes_and_ext_reach_each_other(topo, listeners: Listeners) -> None:
    lab, _ = topo
    hosts = [(n.netns, n.addr, n.name) for n in lab.nodes] + [(lab.ext_netns, lab.ext_addr, "ext")]
    for netns, _, label in hosts:
        listeners.add(netns, label)
    for netns, _, label in hosts:
        answers = connect_all(netns, [addr for _, addr, _ in hosts])
        assert answers == {addr: other for _, addr, other in hosts}, f"from {label}"


@root
def test_no_default_route_and_no_way_out(topo) -> None:
    lab, _ = topo
    for netns in lab_netns(lab.prefix):
        for family in ("-4", "-6"):
            out = subprocess.run(
                ["ip", "-n", netns, family, "route", "show", "default"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert out.strip() == "", f"{netns} has a default route: {out}"
    answers = connect_all(lab.nodes[0].netns, ["1.1.1.1", "8.8.8.8"], port=53)
    assert all("unreachable" in a for a in answers.values()), answers


@root
def test_root_namespace_untouched(topo) -> None:
    lab, before = topo
    assert root_links() - before == set()
    assert not any(lab.prefix in link for link in root_links())


@root
def test_nodes_forward(topo) -> None:
    lab, _ = topo
    for node in lab.nodes:
        proc = in_netns(node.netns, "print(open('/proc/sys/net/ipv4/ip_forward').read())")
        assert proc.stdout.strip() == "1", node.netns


@root
def test_up_is_idempotent_and_repairs(topo, listeners: Listeners) -> None:
    lab, _ = topo
    namespaces = lab_netns(lab.prefix)
    assert lab_up(lab.name, nodes=3, start_processes=False) == lab
    assert lab_netns(lab.prefix) == namespaces
    assert lab_status(lab.name) == lab
    with pytest.raises(Conflict, match="3 nodes"):
        lab_up(lab.name, nodes=2, start_processes=False)

    # A node namespace lost: up makes it again, wired as before.
    subprocess.run(["ip", "netns", "del", lab.nodes[1].netns], check=True)
    assert lab_up(lab.name, nodes=3, start_processes=False) == lab
    assert lab_netns(lab.prefix) == namespaces
    listeners.add(lab.nodes[1].netns, "back")
    assert connect_all(lab.nodes[0].netns, [lab.nodes[1].addr]) == {lab.nodes[1].addr: "back"}


@root
def test_two_labs_side_by_side(topo, listeners: Listeners) -> None:
    a, before = topo
    b = lab_up(unique_name(), nodes=2, start_processes=False)
    try:
        assert [n.addr for n in b.nodes] == [n.addr for n in a.nodes[:2]]
        listeners.add(b.nodes[1].netns, "lab b", port=PORT + 1)
        addr = b.nodes[1].addr
        assert connect_all(b.nodes[0].netns, [addr], PORT + 1) == {addr: "lab b"}
        # The same address in lab a is another host on another switch: nothing listens there.
        assert "refused" in connect_all(a.nodes[0].netns, [addr], PORT + 1)[addr]
        assert root_links() - before == set()
    finally:
        lab_down(b.name)
    assert_gone(b.name)
    assert lab_status(a.name) == a
    assert set(lab_netns(a.prefix)) >= {a.switch_netns, a.ext_netns, *(n.netns for n in a.nodes)}


@root
def test_down_leaves_nothing() -> None:
    name = unique_name()
    lab = lab_up(name, nodes=2, start_processes=False)
    # What agents add: a task namespace with a process in it, and its /etc/netns directory.
    task_ns = f"{lab.prefix}task1"
    subprocess.run(["ip", "netns", "add", task_ns], check=True)
    (NETNS_ETC / task_ns).mkdir(parents=True)
    (NETNS_ETC / task_ns / "resolv.conf").write_text("nameserver 127.0.0.11\n")
    sleeper = subprocess.Popen(
        ["ip", "netns", "exec", task_ns, "sleep", "600"], start_new_session=True
    )
    lab_down(name)
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    assert_gone(name)
    lab_down(name)  # nothing there: no error
    assert_gone(name)


# --- processes ---------------------------------------------------------------------------

FAKE_SHOAL = """
import asyncio, json, os, subprocess, sys

args = sys.argv[1:]
assert args[:2] == ["-m", "shoal"], args
role, opts = args[2], dict(zip(args[3::2], args[4::2]))
if os.environ.get("FAKE_SHOAL_FAIL") and role in ("manager", "agent"):
    print("boom: cannot start", role, flush=True)
    sys.exit(3)

ready = {}


async def agent_session(reader, writer):
    host = (await reader.readline()).decode().strip()
    ready[host] = ready.get(host, 0) + 1
    try:
        await reader.read()
    finally:
        ready[host] -= 1


async def docker_api(reader, writer):
    request = await reader.readuntil(b"\\r\\n\\r\\n")
    nodes = [{"ID": h, "Description": {"Hostname": h}, "Status": {"State": "ready"}}
             for h, n in sorted(ready.items()) if n > 0]
    if b"/swarm " in request:  # the lab asks for the worker token to join the nodes
        nodes = {"JoinTokens": {"Worker": "fake-token"}}
    body = json.dumps(nodes).encode()
    writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
                 b"Content-Length: %d\\r\\nConnection: close\\r\\n\\r\\n" % len(body) + body)
    await writer.drain()
    writer.close()


async def manager():
    host, port = opts["--listen"].rsplit(":", 1)
    await asyncio.start_server(agent_session, host, int(port))
    if os.path.exists(opts["--socket"]):
        os.unlink(opts["--socket"])
    await asyncio.start_unix_server(docker_api, opts["--socket"])
    print("manager listening", flush=True)
    await asyncio.Event().wait()


async def agent():
    # A task namespace with a process of its own, outside the agent's process group.
    task_ns = opts["--ns-prefix"] + "task-" + opts["--hostname"]
    subprocess.run(["ip", "netns", "add", task_ns])
    stray = subprocess.Popen(["ip", "netns", "exec", task_ns, "sleep", "600"],
                             start_new_session=True)
    with open(os.path.join(opts["--state-dir"], "stray.pid"), "w") as f:
        f.write(str(stray.pid))
    host, port = opts["--manager"].rsplit(":", 1)
    while True:
        try:
            reader, writer = await asyncio.open_connection(
                host, int(port), local_addr=(opts["--addr"], 0))
            writer.write((opts["--hostname"] + "\\n").encode())
            await writer.drain()
            print("registered", flush=True)
            await reader.read()
        except OSError as exc:
            print("manager not there:", exc, flush=True)
        await asyncio.sleep(0.1)


if role == "init":
    sys.exit(0)
if role == "join":  # the lab's sign that a node has joined
    tls = os.path.join(args[args.index("--state-dir") + 1], "tls")
    os.makedirs(tls, exist_ok=True)
    open(os.path.join(tls, "node.pem"), "w").close()
    sys.exit(0)
asyncio.run(manager() if role == "manager" else agent())
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    script = tmp_path / "fakepython"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_SHOAL))
    script.chmod(0o755)
    return str(script)


def netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def ready_nodes(lab: Lab) -> list[str]:
    nodes = Client(lab.docker_host).get("/nodes")
    return sorted(n["Description"]["Hostname"] for n in nodes if n["Status"]["State"] == "ready")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@root
def test_processes_up_restart_down(fake_python: str) -> None:
    name = unique_name()
    try:
        lab = lab_up(name, nodes=3, python=fake_python, wait=20)
        assert ready_nodes(lab) == ["node1", "node2", "node3"]
        pids = {proc: pid_of(lab, proc) for proc in lab.procs}
        assert all(pids.values()), pids
        for proc, pid in pids.items():
            assert lab.pid_file(proc).read_text().strip() == str(pid)
            assert lab.log_file(proc).exists()
            netns = lab.nodes[0].netns if proc == "manager" else lab.node(proc).netns
            assert netns_inode(pid) == os.stat(f"/run/netns/{netns}").st_ino, proc
        strays = [int((lab.node_state_dir(n) / "stray.pid").read_text()) for n in lab.nodes]
        assert all(alive(p) for p in strays)

        # The manager goes away and comes back; the agents find it again.
        stop_manager(lab)
        assert pid_of(lab, "manager") is None and not alive(pids["manager"])
        with pytest.raises(Unavailable, match="cannot reach the shoal manager"):
            ready_nodes(lab)
        start_manager(lab)
        wait_ready(lab, 20)
        assert ready_nodes(lab) == ["node1", "node2", "node3"]

        # An agent dies: up again restarts it and leaves the others alone.
        os.kill(pids["node2"], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while pid_of(lab, "node2") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid_of(lab, "node2") is None
        assert lab_up(name, nodes=3, python=fake_python, wait=20) == lab
        assert pid_of(lab, "node2") not in (None, pids["node2"])
        assert pid_of(lab, "node1") == pids["node1"]
    finally:
        lab_down(name)
    assert [p for p in [*pids.values(), *strays] if alive(p)] == []
    assert_gone(name)


@root
def test_failed_start_reports_logs(fake_python: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SHOAL_FAIL", "1")
    name = unique_name()
    try:
        with pytest.raises(ShoalError, match="(?s)exited.*boom: cannot start manager"):
            lab_up(name, nodes=2, python=fake_python, wait=10)
    finally:
        lab_down(name)
    assert_gone(name)


@root
def test_root_links_untouched_by_processes_and_down(fake_python: str) -> None:
    before = root_links()
    name = unique_name()
    try:
        lab_up(name, nodes=1, python=fake_python, wait=20)
        assert root_links() - before == set()
    finally:
        lab_down(name)
    assert_gone(name)
    assert root_links() - before == set()
