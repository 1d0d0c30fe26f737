"""Service discovery in a real 3-node lab: real `dig @127.0.0.11`, real getaddrinfo and curl
from inside tasks on different nodes; forwarding through the ext host's dnsmasq."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from shoal.client import Client
from shoal.lab import Lab, lab_down, pid_of
from tests.integration.test_cluster import addr, in_task, netns, running, shoal, wait_for

HTTP = ["--", "python3", "-m", "http.server", "80"]
SLEEP = ["--", "sleep", "600"]


@pytest.fixture
def client(lab: Lab) -> Client:
    return Client(lab.docker_host)


@pytest.fixture
def make(lab: Lab, client: Client) -> Iterator[Callable[..., str]]:
    """make("network", name, *flags) / make("service", name, *flags): created through the CLI,
    all removed afterwards (services first), also when the test fails."""
    made: list[tuple[str, str]] = []

    def create(kind: str, name: str, *args: str) -> str:
        if kind == "network":
            shoal(lab, "network", "create", *args, name)
        else:
            shoal(lab, "service", "create", "--name", name, *args)
        made.append((kind, name))
        return name

    try:
        yield create
    finally:
        for kind, name in reversed(made):
            if kind == "service":
                shoal(lab, "service", "rm", name, check=False)
        wait_for("tasks gone", lambda: not client.get("/tasks"), timeout=60)
        for kind, name in reversed(made):
            if kind == "network":
                shoal(lab, "network", "rm", name, check=False)


def dig(task: dict, name: str, *opts: str, rdtype: str = "A") -> tuple[str, list[str]]:
    """(status, answer lines' data) of `dig @127.0.0.11 name` run inside the task."""
    out = in_task(task, "dig", "@127.0.0.11", "+tries=1", "+time=3", *opts, name, rdtype)
    status = re.search(r"status: (\w+)", out.stdout)
    if status is None:  # no answer at all (refused, timed out): a status of our own
        return "NO ANSWER", [out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""]
    answers = []
    section = False
    for line in out.stdout.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            section = True
        elif section and not line.strip():
            section = False
        elif section:
            answers.append(line.split()[-1])
    return status.group(1), sorted(answers)


def vip(client: Client, service: str, network: str) -> str:
    svc = client.find("service", service)
    net = client.find("network", network)
    return next(v["Addr"].split("/")[0] for v in svc["Endpoint"]["VirtualIPs"]
                if v["NetworkID"] == net["Id"])


def addr_on(task: dict, client: Client, network: str) -> str:
    net_id = client.find("network", network)["Id"]
    return next(a["Addresses"][0].split("/")[0] for a in task["NetworksAttachments"]
                if a["Network"]["ID"] == net_id)


def on_distinct_nodes(tasks: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for t in tasks:
        seen.setdefault(t["NodeID"], t)
    return list(seen.values())


def getaddr(task: dict, name: str) -> str:
    out = in_task(task, "python3", "-c",
                  f"import socket; print(socket.gethostbyname({name!r}))")
    return out.stdout.strip() or out.stderr.strip().splitlines()[-1]


def curl(task: dict, url: str) -> str:
    out = in_task(task, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time",
                  "5", url)
    return out.stdout


def test_every_name_kind_from_tasks_on_different_nodes(lab, client, make) -> None:
    make("network", "appnet", "-d", "overlay")
    make("service", "web", "--replicas", "3", "--network", "name=appnet,alias=www", *HTTP)
    make("service", "rr", "--replicas", "2", "--endpoint-mode", "dnsrr", "--network", "appnet",
         *HTTP)
    web = wait_for("web running", lambda: running(client, "web", 3))
    rr = wait_for("rr running", lambda: running(client, "rr", 2))
    web_vip = vip(client, "web", "appnet")
    web_ips = sorted(addr(t) for t in web)
    rr_ips = sorted(addr(t) for t in rr)
    web1 = next(t for t in web if t["Slot"] == 1)
    askers = on_distinct_nodes(web + rr)
    assert len(askers) == 3  # one asker on each node
    expect = {
        "web": [web_vip], "WEB.": [web_vip], "web.appnet": [web_vip], "www": [web_vip],
        "tasks.web": web_ips, "tasks.www": web_ips, "tasks.web.appnet": web_ips,
        "web.1": [addr(web1)], f"web.1.{web1['ID']}": [addr(web1)],
        f"web.1.{web1['ID']}.appnet": [addr(web1)],
        "rr": rr_ips, "tasks.rr": rr_ips,
    }
    for asker in askers:
        for name, want in expect.items():
            assert dig(asker, name) == ("NOERROR", want), (name, asker["NodeID"])
        assert dig(asker, "web", rdtype="AAAA") == ("NOERROR", [])  # known name, other type
        assert dig(asker, "web", rdtype="MX") == ("NOERROR", [])
        rev = ".".join(reversed(addr(web1).split("."))) + ".in-addr.arpa"
        assert dig(asker, rev, rdtype="PTR") == ("NOERROR", [f"web.1.{web1['ID']}.appnet."])
        rev = ".".join(reversed(web_vip.split("."))) + ".in-addr.arpa"
        assert dig(asker, rev, rdtype="PTR") == ("NOERROR", ["web.appnet."])
        # What programs see: getaddrinfo through resolv.conf, and an HTTP request by name.
        assert getaddr(asker, "web") == web_vip
        assert getaddr(asker, "rr") in rr_ips
        for url in ("http://tasks.web:80/", "http://web.2:80/", "http://rr:80/",
                    "http://tasks.www/"):
            assert wait_for(f"{url} from {asker['NodeID']}", lambda a=asker, u=url: (
                lambda code: code if code == "200" else None)(curl(a, u)), timeout=15) == "200"
    # The task's resolv.conf, as `ip netns exec` shows it to the task.
    out = in_task(web1, "cat", "/etc/resolv.conf").stdout
    assert out == "nameserver 127.0.0.11\noptions ndots:0\n"


def test_scoping_both_ways_across_two_networks(lab, client, make) -> None:
    make("network", "frontnet", "-d", "overlay")
    make("network", "backnet", "-d", "overlay")
    make("service", "api", "--replicas", "2", "--network", "frontnet", *SLEEP)
    make("service", "db", "--replicas", "2", "--network", "backnet", *SLEEP)
    make("service", "gw", "--replicas", "1", "--network", "frontnet", "--network", "backnet",
         *SLEEP)
    api = wait_for("api", lambda: running(client, "api", 2))
    db = wait_for("db", lambda: running(client, "db", 2))
    gw = wait_for("gw", lambda: running(client, "gw", 1))
    gw_front, gw_back = vip(client, "gw", "frontnet"), vip(client, "gw", "backnet")
    for asker in on_distinct_nodes(api):
        assert dig(asker, "db") == ("NXDOMAIN", [])  # not ours: asked upstream, unknown there
        assert dig(asker, "tasks.db") == ("NXDOMAIN", [])
        assert dig(asker, "gw") == ("NOERROR", [gw_front])  # never backnet's VIP
        assert dig(asker, "tasks.gw") == ("NOERROR", [addr_on(gw[0], client, "frontnet")])
        assert dig(asker, "gw.backnet") == ("NXDOMAIN", [])
    for asker in on_distinct_nodes(db):
        assert dig(asker, "api") == ("NXDOMAIN", [])
        assert dig(asker, "gw") == ("NOERROR", [gw_back])
        assert dig(asker, "tasks.gw") == ("NOERROR", [addr_on(gw[0], client, "backnet")])
    # On both networks: both, each by its network's name too.
    assert dig(gw[0], "gw") == ("NOERROR", sorted([gw_front, gw_back]))
    assert dig(gw[0], "gw.frontnet") == ("NOERROR", [gw_front])
    assert dig(gw[0], "tasks.api") == ("NOERROR", sorted(addr(t) for t in api))
    assert dig(gw[0], "tasks.db") == ("NOERROR", sorted(addr(t) for t in db))


def test_forwarding_through_the_outside_dns_server(lab, client, make) -> None:
    make("network", "appnet", "-d", "overlay")
    make("service", "app", "--replicas", "3", "--network", "appnet", *SLEEP)
    # --dns: this service's own upstreams, in order; the first cannot be reached at all
    # (TEST-NET-1: no route from a node).
    make("service", "own", "--replicas", "1", "--network", "appnet", "--dns", "192.0.2.1",
         "--dns", lab.ext_addr, "--dns-search", "outside.test", "--dns-option", "timeout:3",
         *SLEEP)
    make("service", "dead", "--replicas", "1", "--network", "appnet", "--dns", "192.0.2.1",
         *SLEEP)
    app = wait_for("app", lambda: running(client, "app", 3))
    own = wait_for("own", lambda: running(client, "own", 1))[0]
    dead = wait_for("dead", lambda: running(client, "dead", 1))[0]
    for asker in on_distinct_nodes(app):
        assert dig(asker, "www.outside.test") == ("NOERROR", [lab.ext_addr])
        assert dig(asker, "WWW.Outside.Test.", "+tcp") == ("NOERROR", [lab.ext_addr])
        assert dig(asker, "nosuch.outside.test") == ("NXDOMAIN", [])  # passed on as it came
        assert getaddr(asker, "www.outside.test") == lab.ext_addr
    assert dig(own, "www.outside.test") == ("NOERROR", [lab.ext_addr])
    assert dig(own, "app") == ("NOERROR", [vip(client, "app", "appnet")])  # still ours
    assert getaddr(own, "api") == lab.ext_addr  # the search domain from --dns-search
    assert in_task(own, "cat", "/etc/resolv.conf").stdout == (
        "nameserver 127.0.0.11\nsearch outside.test\noptions ndots:0 timeout:3\n")
    assert dig(dead, "www.outside.test") == ("SERVFAIL", [])  # no upstream answered
    assert dig(dead, "app") == ("NOERROR", [vip(client, "app", "appnet")])


def test_internal_network_does_not_forward(lab, client, make) -> None:
    make("network", "privnet", "-d", "overlay", "--internal")
    make("service", "vault", "--replicas", "2", "--network", "privnet", *SLEEP)
    tasks = wait_for("vault", lambda: running(client, "vault", 2))
    for asker in tasks:
        assert dig(asker, "www.outside.test") == ("REFUSED", [])
        assert dig(asker, "tasks.vault") == ("NOERROR", sorted(addr(t) for t in tasks))


def test_truncation_and_tcp_retry_with_40_tasks(lab, client, make) -> None:
    make("network", "bignet", "-d", "overlay")
    make("service", "big", "--replicas", "40", "--endpoint-mode", "dnsrr", "--network",
         "bignet", *SLEEP)
    tasks = wait_for("40 running", lambda: running(client, "big", 40), timeout=180, every=1)
    ips = sorted(addr(t) for t in tasks)
    asker = tasks[0]
    # Without EDNS0 a UDP answer stops at 512 bytes: TC, and dig asks again over TCP.
    out = in_task(asker, "dig", "@127.0.0.11", "+noedns", "+tries=1", "tasks.big")
    assert "Truncated, retrying in TCP mode" in out.stdout
    assert dig(asker, "tasks.big", "+noedns") == ("NOERROR", ips)
    out = in_task(asker, "dig", "@127.0.0.11", "+noedns", "+ignore", "+tries=1", "tasks.big")
    assert "flags: qr aa tc rd ra" in out.stdout and "ANSWER: 0" in out.stdout
    # With EDNS0 (dig's default, 1232 bytes) all 40 fit in one UDP answer.
    out = in_task(asker, "dig", "@127.0.0.11", "+tries=1", "tasks.big")
    assert "Truncated" not in out.stdout and "ANSWER: 40" in out.stdout
    # glibc's stub (no EDNS0) gets TC and retries over TCP by itself.
    code = ("import socket; print(len({a[4][0] for a in "
            "socket.getaddrinfo('tasks.big', 80, type=socket.SOCK_STREAM)}))")
    assert in_task(asker, "python3", "-c", code).stdout.strip() == "40"


def test_fresh_answers_right_after_scaling(lab, client, make) -> None:
    make("network", "appnet", "-d", "overlay")
    make("service", "web", "--replicas", "2", "--network", "appnet", *SLEEP)
    make("service", "probe", "--mode", "global", "--network", "appnet", *SLEEP)
    wait_for("web", lambda: running(client, "web", 2))
    probes = wait_for("probes", lambda: running(client, "probe", 3))

    def converged(count: int) -> list[str] | None:
        tasks = running(client, "web", count)
        if tasks is None:
            return None
        want = sorted(addr(t) for t in tasks)
        for p in probes:
            if dig(p, "tasks.web") != ("NOERROR", want):
                return None
        return want

    for count in (5, 1, 3):
        started = time.monotonic()
        shoal(lab, "service", "scale", f"web={count}")
        want = wait_for(f"every node answers {count} tasks", lambda c=count: converged(c),
                        timeout=30, every=0.05)
        took = time.monotonic() - started
        assert len(want) == count
        print(f"scale to {count}: every node answers in {took:.2f}s (task start included)")
    # A task that dies leaves the answers; its replacement joins them.
    victim = running(client, "web", 3)[0]  # type: ignore[index]
    os.kill(victim["Status"]["ContainerStatus"]["PID"], 9)

    def replaced() -> list[str] | None:
        tasks = running(client, "web", 3)
        if not tasks or victim["ID"] in {t["ID"] for t in tasks}:
            return None
        return converged(3)

    wait_for("answers without the dead task, with its replacement", replaced, timeout=30)
    # Removed: the name goes (asked upstream now, which does not know it).
    shoal(lab, "service", "rm", "web")
    wait_for("web gone everywhere", lambda: all(dig(p, "web") == ("NXDOMAIN", [])
                                                for p in probes), timeout=30)


def test_resolver_is_restarted_and_files_are_cleaned(lab, client, make) -> None:
    make("network", "appnet", "-d", "overlay")
    make("service", "web", "--replicas", "3", "--network", "appnet", *SLEEP)
    tasks = wait_for("web", lambda: running(client, "web", 3))
    asker = tasks[0]
    want = dig(asker, "tasks.web")
    assert want[0] == "NOERROR" and len(want[1]) == 3
    # Kill the resolver of the asker's node (the agent's child running shoal.dns).
    node = next(n for n in client.get("/nodes") if n["ID"] == asker["NodeID"])
    resolver_pid = _resolver_pid(lab, node["Description"]["Hostname"])
    os.kill(resolver_pid, 9)
    wait_for("answers again", lambda: dig(asker, "tasks.web") == want, timeout=15, every=0.2)
    assert _resolver_pid(lab, node["Description"]["Hostname"]) != resolver_pid
    # Service removed: each task's /etc/netns/<ns> goes with its namespace.
    dirs = [f"/etc/netns/{netns(t)}" for t in tasks]
    assert all(os.path.exists(d) for d in dirs)
    shoal(lab, "service", "rm", "web")
    wait_for("resolv.conf dirs gone", lambda: not any(os.path.exists(d) for d in dirs))


def _resolver_pid(lab: Lab, node_name: str) -> int:
    agent = pid_of(lab, node_name)
    assert agent is not None
    children = []
    for tid in os.listdir(f"/proc/{agent}/task"):
        with open(f"/proc/{agent}/task/{tid}/children") as f:
            children += [int(p) for p in f.read().split()]
    for pid in children:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"shoal.dns" in f.read():
                return pid
    raise AssertionError(f"no resolver under the agent of {node_name}")


def test_no_dns_process_or_file_is_left_by_a_lab(make_lab) -> None:
    small = make_lab(nodes=1)
    pid = int(small.run_dir.joinpath("dnsmasq.pid").read_text())
    assert _alive(pid)
    lab_down(small.name)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)
    assert not small.run_dir.exists()
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert small.prefix not in out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
