"""Encrypted overlays in a real lab, with real packets (docs/encryption.md).

One lab for the module: node1 and node2 run wireguard-go; node3's agent is started with a
wireguard-go that does not exist, so it cannot encrypt. The manager rotates the preshared key
every ROTATION seconds (a test-only interval: SHOAL_TEST_SHORT_ROTATION), so every test here
also runs through rotations.

Shown: tasks of an encrypted network on two nodes talk (TCP, UDP, the service name and its
VIP); a capture on the lab's switch sees WireGuard and never the payload, while the payload
of an unencrypted network is there in the clear; cleartext VXLAN for the encrypted VNI, even
from a peer, reaches no task; inspect says per node whether encryption is up and why not;
node3 gets no task of the encrypted network until it can encrypt; a client loop sees no
error through key rotations and a fresh handshake under a rotated key.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.client import Client
from shoal.dataplane.wireguard import uapi_exchange
from shoal.lab import Lab, lab_down, lab_up, start_agent, stop_agent
from tests.conftest import NOT_ROOT, unique_lab_name
from tests.integration.test_cluster import in_task, netns, tasks_of, wait_for
from tests.integration.test_isolation import UDP_LISTEN

SECNET, PLAINNET = "secnet", "plainnet"
SEC, PLAIN, EVERY = "secweb", "plainweb", "secglobal"
ROTATION = 4  # seconds between preshared keys
UDP_PORT = 9000

# HTTP whoami on 80 and a UDP echo on UDP_PORT.
SERVER = """
import http.server, os, socket, threading
def echo():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", @UDP_PORT@))
    while True:
        data, peer = s.recvfrom(4096)
        s.sendto(data, peer)
threading.Thread(target=echo, daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["SHOAL_TASK_NAME"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", 80), H).serve_forever()
""".replace("@UDP_PORT@", str(UDP_PORT))

# One UDP round trip, never fragmented (DF): prints what came back, or the error's name.
UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
s.settimeout(3)
try:
    s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
    print(s.recvfrom(4096)[0].decode())
except OSError as e:
    print(type(e).__name__)
"""

# Until SIGTERM: an HTTP GET on a new connection and a UDP round trip, every 20 ms; then
# prints {"ok": n, "errors": [...]}.
CLIENT_LOOP = """
import json, signal, socket, sys, time, urllib.request
url, ip = sys.argv[1], sys.argv[2]
stop = False
def done(*a):
    global stop
    stop = True
signal.signal(signal.SIGTERM, done)
ok, errors = 0, []
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
print("ready", flush=True)
while not stop:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            r.read()
        u.sendto(b"ping", (ip, @UDP_PORT@))
        assert u.recvfrom(64)[0] == b"ping"
        ok += 1
    except Exception as e:
        errors.append(f"{time.time():.3f} {type(e).__name__}: {e}")
    time.sleep(0.02)
print(json.dumps({"ok": ok, "errors": errors}), flush=True)
""".replace("@UDP_PORT@", str(UDP_PORT))

# A VXLAN packet as a peer would send it, from any namespace: a raw IPv4 packet with the
# peer's address as its source (node1's own filter would not let it out: see chain output).
VXLAN_INJECT = """
import socket, struct, sys
peer, node, port, vni, dmac, src, dst, dport, payload = sys.argv[1:10]
def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
def ipv4(src, dst, body):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, 64, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + body
def udp(sport, dport, data):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
inner = ipv4(src, dst, udp(40000, int(dport), payload.encode()))
frame = bytes.fromhex(dmac.replace(":", "")) + bytes.fromhex("02420a00fffe") + b"\\x08\\x00"
vxlan = struct.pack("!II", 0x08000000, int(vni) << 8) + frame + inner
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(3):
    s.sendto(ipv4(peer, node, udp(40001, int(port), vxlan)), (node, 0))
"""


def _service(name: str, network: str, replicas: int | None = 2) -> dict:
    mode = {"Replicated": {"Replicas": replicas}} if replicas is not None else {"Global": {}}
    return {"Name": name, "Mode": mode, "TaskTemplate": {
        "ContainerSpec": {"Image": "local", "Command": [sys.executable, "-c", SERVER]},
        "Networks": [{"Target": network}]}}


@pytest.fixture(scope="module")
def world() -> Iterator[dict]:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    name = unique_lab_name()
    saved = {k: os.environ.get(k) for k in ("SHOAL_TEST_SHORT_ROTATION",
                                             "SHOAL_ENCRYPTION_KEY_ROTATION")}
    os.environ.update(SHOAL_TEST_SHORT_ROTATION="1", SHOAL_ENCRYPTION_KEY_ROTATION=f"{ROTATION}s")
    try:
        lab = lab_up(name, nodes=3)
        # node3 cannot encrypt: its agent looks for wireguard-go where there is none.
        stop_agent(lab, 3)
        os.environ["SHOAL_WIREGUARD_GO"] = "/nonexistent/wireguard-go"
        try:
            start_agent(lab, 3)
        finally:
            del os.environ["SHOAL_WIREGUARD_GO"]
        c = Client(lab.docker_host)
        wait_for("node3 back", lambda: len([n for n in c.get("/nodes")
                                             if n["Status"]["State"] == "ready"]) == 3)
        ids = {}
        for net, opts in ((SECNET, {"encrypted": ""}), (PLAINNET, {})):
            ids[net] = c.request("POST", "/networks/create", {
                "Name": net, "Driver": "overlay", "Options": opts})["Id"]
        c.request("POST", "/services/create", _service(SEC, SECNET))
        c.request("POST", "/services/create", _service(PLAIN, PLAINNET))
        for svc in (SEC, PLAIN):
            tasks = wait_for(f"{svc} running", lambda s=svc: _running(c, s, 2), timeout=60)
            for t in tasks:  # "running" is the process started; wait until it serves
                wait_for(f"{svc} serving", lambda t=t: in_task(
                    t, "curl", "-s", "-m", "2", "http://127.0.0.1/").stdout, timeout=20)
        yield {"lab": lab, "client": c, "ids": ids}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        lab_down(name)


def _running(c: Client, service: str, count: int) -> list[dict] | None:
    up = [t for t in tasks_of(c, service) if t["Status"]["State"] == "running"]
    return up if len(up) == count else None


def _nodes(c: Client) -> dict[str, str]:
    return {n["ID"]: n["Description"]["Hostname"] for n in c.get("/nodes")}


def _by_node(c: Client, service: str) -> dict[str, dict]:
    names = _nodes(c)
    return {names[t["NodeID"]]: t for t in tasks_of(c, service)
            if t["Status"]["State"] == "running"}


def _ip(task: dict) -> str:
    return task["NetworksAttachments"][0]["Addresses"][0].split("/")[0]


def _mac(ip: str) -> str:
    return "02:42:" + ":".join(f"{int(p):02x}" for p in ip.split("."))


def _vni(c: Client, net_id: str) -> int:
    opts = c.get(f"/networks/{net_id}")["Options"]
    return int(opts["com.docker.network.driver.overlay.vxlanid_list"])


def _node_netns(lab: Lab, n: int) -> str:
    return lab.node(n).netns


def test_tasks_on_two_nodes_talk_tcp_udp_and_by_name(world) -> None:
    c = world["client"]
    tasks = _by_node(c, SEC)
    assert sorted(tasks) == ["node1", "node2"]  # node3 cannot encrypt: none there
    a, b = tasks["node1"], tasks["node2"]
    out = in_task(a, "curl", "-s", "-m", "5", f"http://{_ip(b)}/")
    assert out.stdout == "secweb.2" or out.stdout == "secweb.1", out
    udp = in_task(a, sys.executable, "-c", UDP_ASK, _ip(b), str(UDP_PORT), "hello-udp")
    assert udp.stdout.strip() == "hello-udp"
    # The service name resolves to its VIP on the encrypted network, which balances to both.
    vip = c.get(f"/services/{SEC}")["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]
    dig = in_task(a, "dig", "+short", SEC)
    assert dig.stdout.split() == [vip]
    seen = {in_task(a, "curl", "-s", "-m", "5", f"http://{SEC}/").stdout for _ in range(12)}
    assert seen == {"secweb.1", "secweb.2"}
    # Big enough to need the smaller MTU end to end: nothing fragments, nothing is lost.
    link = in_task(a, "ip", "-o", "link", "show", "eth0").stdout
    assert link.split("mtu ")[1].split()[0] == "1370", link
    full = "x" * (1370 - 28)  # IPv4 20 + UDP 8
    big = in_task(a, sys.executable, "-c", UDP_ASK, _ip(b), str(UDP_PORT), full)
    assert big.stdout.strip() == full
    over = in_task(a, sys.executable, "-c", UDP_ASK, _ip(b), str(UDP_PORT), full + "x")
    assert over.stdout.strip() == "OSError"  # EMSGSIZE: larger than the network's MTU


def _capture(lab: Lab, during) -> bytes:
    """Every frame on the lab switch's ports while `during()` ran, as pcap bytes (on br0
    itself tcpdump would only see what the bridge delivers locally, not what it forwards).
    The pcap goes to a file this process opened (tcpdump drops its privileges)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(["ip", "netns", "exec", lab.switch_netns, "tcpdump", "-i",
                                 "any", "-U", "-s", "0", "-w", "-"], stdout=out,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            while "listening on" not in (line := proc.stderr.readline()):
                assert line, "tcpdump did not start"
            during()
            time.sleep(1.0)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=10)
        out.seek(0)
        return out.read()


def test_a_capture_on_the_underlay_shows_no_plaintext_of_an_encrypted_network(world) -> None:
    c, lab = world["client"], world["lab"]
    sec, plain = _by_node(c, SEC), _by_node(c, PLAIN)
    a, b = sec["node1"], sec["node2"]
    (pa, pb) = list(plain.values())[:2]
    secret = "SHOALSECRET" + secrets.token_hex(8)
    visible = "SHOALPLAIN" + secrets.token_hex(8)

    def send() -> None:
        for _ in range(3):
            assert in_task(a, sys.executable, "-c", UDP_ASK, _ip(b), str(UDP_PORT),
                           secret).stdout.strip() == secret
            assert in_task(a, "curl", "-s", "-m", "5", "-H", f"X-Secret: {secret}",
                           f"http://{_ip(b)}/").returncode == 0
            assert in_task(pa, sys.executable, "-c", UDP_ASK, _ip(pb), str(UDP_PORT),
                           visible).stdout.strip() == visible

    pcap = _capture(lab, send)
    assert visible.encode() in pcap  # the capture works: cleartext overlay payload is seen
    assert secret.encode() not in pcap
    # And the encrypted traffic did cross the switch, as WireGuard (UDP 51820 = 0xca6c).
    assert b"\xca\x6c" in pcap


def test_injected_cleartext_vxlan_for_the_encrypted_vni_is_not_delivered(world) -> None:
    c, lab = world["client"], world["lab"]
    sec, plain = _by_node(c, SEC), _by_node(c, PLAIN)
    target = sec["node2"]
    sec_vni, plain_vni = _vni(c, world["ids"][SECNET]), _vni(c, world["ids"][PLAINNET])
    node2 = lab.node(2).addr
    # As from node1, a cluster peer whose VXLAN node2 accepts (sent from ext with node1's
    # address): to the encrypted port and to the plain port, with the encrypted network's
    # VNI. Neither may reach the task.
    for port in (4790, 4789):
        got = _inject(lab, target, node2, port, sec_vni, f"cleartext-{port}")
        assert got == "nothing", f"cleartext VXLAN on {port} was delivered: {got}"
    # The same injection for the plain network is delivered: the packet itself is right.
    pnode, ptask = next((n, t) for n, t in plain.items() if n != "node1")
    got = _inject(lab, ptask, lab.node(pnode).addr, 4789, plain_vni, "plain-ok")
    assert got.startswith("plain-ok")


def _inject(lab: Lab, task: dict, node_addr: str, port: int, vni: int, payload: str) -> str:
    listen = subprocess.Popen(["ip", "netns", "exec", netns(task), sys.executable, "-c",
                               UDP_LISTEN, "7777", "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert listen.stdout is not None and listen.stdout.readline().strip() == "ready"
        ip = _ip(task)
        src = ip.rsplit(".", 1)[0] + ".254"
        subprocess.run(["ip", "netns", "exec", lab.ext_netns, sys.executable, "-c",
                        VXLAN_INJECT, lab.node(1).addr, node_addr, str(port), str(vni),
                        _mac(ip), src, ip, "7777", payload], check=True, timeout=10)
        out, _ = listen.communicate(timeout=10)
        return out.strip()
    finally:
        if listen.poll() is None:
            listen.kill()
            listen.wait()


def test_inspect_shows_encryption_per_node_and_why_not(world) -> None:
    c = world["client"]
    out = json.loads(subprocess.run(
        [sys.executable, "-m", "shoal", "--host", world["lab"].docker_host, "network",
         "inspect", SECNET], capture_output=True, text=True, check=True).stdout)[0]
    nodes = {n["Name"]: n for n in out["Encryption"]["Nodes"]}
    for name in ("node1", "node2"):
        n = nodes[name]
        assert n["Ready"] and n["Carrying"] and n["Up"] and not n["Error"], n
        (peer,) = n["Peers"]
        assert peer["Configured"] and peer["PresharedKey"] and peer["LastHandshake"], peer
    assert not nodes["node3"]["Ready"] and not nodes["node3"]["Carrying"]
    assert "wireguard-go not found" in nodes["node3"]["Error"]
    assert {p["Name"] for p in out["Peers"]} == {"node1", "node2"}
    plain = c.get(f"/networks/{PLAINNET}")
    assert "Encryption" not in plain


def _psk_of(lab: Lab, c: Client, node: int, peer: int) -> str:
    """The preshared key node `node` holds for `peer`, read from its UAPI socket."""
    found = _parse_peer(_uapi(_iface(c, f"node{node}"), "get=1\n\n"), _pubkey(c, f"node{peer}"))
    return found.get("preshared_key", "")


def _uapi(ifname: str, request: str) -> str:
    return uapi_exchange(ifname, request.encode())


def _parse_peer(text: str, want: str) -> dict[str, str]:
    current: dict[str, str] = {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "public_key":
            current = {"public_key": value}
            if value == want:
                found = current
        elif current:
            current[key] = value
    return found


def _generation(c: Client) -> int:
    return int(c.get("/swarm")["Shoal"]["Encryption"]["Generation"])


def test_key_rotation_under_a_client_loop_loses_nothing(world) -> None:
    c, lab = world["client"], world["lab"]
    sec = _by_node(c, SEC)
    a, b = sec["node1"], sec["node2"]
    loop = subprocess.Popen(["ip", "netns", "exec", netns(a), sys.executable, "-c",
                             CLIENT_LOOP, f"http://{_ip(b)}/", _ip(b)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert loop.stdout is not None and loop.stdout.readline().strip() == "ready"
        start = _generation(c)
        psks = {_psk_of(lab, c, 1, 2)}
        # Through two rotations on the running session...
        wait_for("two rotations", lambda: _generation(c) >= start + 2, timeout=4 * ROTATION)
        wait_for("both ends on the new key", lambda: _psk_of(lab, c, 1, 2)
                 == _psk_of(lab, c, 2, 1) and _psk_of(lab, c, 1, 2) not in psks, timeout=5)
        psks.add(_psk_of(lab, c, 1, 2))
        # ...then a fresh handshake under a rotated key: drop node1's session with node2 and
        # configure the peer again exactly as the agent had it (the agent's view of the
        # device is unchanged); traffic waits for the new handshake, which must succeed.
        ifname = _iface(c, "node1")
        pub = _pubkey(c, "node2")
        before = _parse_peer(_uapi(ifname, "get=1\n\n"), pub)
        readd = (f"set=1\npublic_key={pub}\nremove=true\npublic_key={pub}\n"
                 f"preshared_key={before['preshared_key']}\nendpoint={before['endpoint']}\n"
                 f"allowed_ip={before['allowed_ip']}\n\n")
        redone = time.time()
        assert "errno=0" in _uapi(ifname, readd)
        wait_for("a new handshake", lambda: int(_parse_peer(_uapi(ifname, "get=1\n\n"), pub)
                                                .get("last_handshake_time_sec", "0")) >= redone
                 - 1, timeout=10)
        # ...and one more rotation after it.
        now = _generation(c)
        wait_for("one more rotation", lambda: _generation(c) >= now + 1, timeout=4 * ROTATION)
        time.sleep(1)
    finally:
        loop.send_signal(signal.SIGTERM)
        out, _ = loop.communicate(timeout=20)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["errors"] == [] and result["ok"] > 100, result


def _iface(c: Client, node: str) -> str:
    n = next(n for n in c.get("/nodes") if n["Description"]["Hostname"] == node)
    return n["Description"]["Shoal"]["Encryption"]["Interface"]


def _pubkey(c: Client, node: str) -> str:
    n = next(n for n in c.get("/nodes") if n["Description"]["Hostname"] == node)
    return base64.b64decode(n["Description"]["Shoal"]["Encryption"]["PublicKey"]).hex()


def test_a_node_that_cannot_encrypt_gets_no_task_until_it_can(world) -> None:
    c, lab = world["client"], world["lab"]
    c.request("POST", "/services/create", _service(EVERY, SECNET, replicas=None))
    names = _nodes(c)
    wait_for("two global tasks running", lambda: _running(c, EVERY, 2), timeout=60)
    node3 = next(i for i, n in names.items() if n == "node3")
    pending = wait_for("node3's task pending with a reason", lambda: next(
        (t for t in tasks_of(c, EVERY) if t["NodeID"] == node3
         and t["Status"]["State"] == "pending" and t["Status"].get("Err")), None))
    assert "encryption is not up on node3" in pending["Status"]["Err"]
    assert "wireguard-go not found" in pending["Status"]["Err"]
    # Nothing of the encrypted network was built on node3.
    links = subprocess.run(["ip", "-n", _node_netns(lab, 3), "-o", "link"], capture_output=True,
                           text=True).stdout
    assert f"shvx{_vni(c, world['ids'][SECNET])}" not in links
    # With wireguard-go back, node3 carries the network, under the current (rotated) key.
    stop_agent(lab, 3)
    start_agent(lab, 3)
    up = wait_for("three global tasks running", lambda: _running(c, EVERY, 3), timeout=60)
    assert _generation(c) > 1
    t3 = next(t for t in up if t["NodeID"] == node3)
    t1 = _by_node(c, EVERY)["node1"]
    out = in_task(t3, "curl", "-s", "-m", "5", f"http://{_ip(t1)}/")
    assert out.stdout == "secglobal." + t1["NodeID"], out


def test_the_docker_cli_and_shoal_cli_make_encrypted_networks(world) -> None:
    lab = world["lab"]
    shoal = [sys.executable, "-m", "shoal", "--host", lab.docker_host]
    subprocess.run([*shoal, "network", "create", "--opt", "encrypted", "clisec"], check=True,
                   capture_output=True, timeout=60)
    out = json.loads(subprocess.run([*shoal, "network", "inspect", "clisec"], check=True,
                                    capture_output=True, text=True, timeout=60).stdout)[0]
    assert "encrypted" in out["Options"] and out["Encryption"]["Enabled"]
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI installed")
    env = dict(os.environ, DOCKER_HOST=lab.docker_host)

    def docker(*args: str) -> str:
        return subprocess.run(["docker", *args], env=env, check=True, capture_output=True,
                              text=True, timeout=60).stdout

    docker("network", "create", "--driver", "overlay", "--opt", "encrypted", "dockersec")
    out = json.loads(docker("network", "inspect", "dockersec"))[0]
    assert "encrypted" in out["Options"]
    # The raw JSON, shoal's fields included (node3 can encrypt again by now: see above).
    nodes = {n["Name"]: n for n in out["Encryption"]["Nodes"]}
    assert set(nodes) == {"node1", "node2", "node3"} and all(n["Ready"] for n in nodes.values())
    assert not any(n["Carrying"] for n in nodes.values())  # no task on it
    peers = json.loads(docker("network", "inspect", "--format", "{{json .Peers}}", SECNET))
    assert {p["Name"] for p in peers} >= {"node1", "node2"}


def _shoal_wireguard_go(lab: Lab, node: int) -> list[int]:
    """Pids of the wireguard-go processes of shoal's interface in a node's namespace."""
    want = f"net:[{os.stat(f'/run/netns/{lab.node(node).netns}').st_ino}]"
    out = []
    for pid in subprocess.run(["pgrep", "-x", "wireguard-go"], capture_output=True,
                              text=True).stdout.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if os.readlink(f"/proc/{pid}/ns/net") == want and argv[-2].startswith(b"shwg"):
                out.append(int(pid))
        except (OSError, IndexError):
            continue
    return out


# UDP datagrams with a marker every 10 ms for argv[3] seconds; errors are expected here.
UDP_SPRAY = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        s.sendto(sys.argv[2].encode(), (sys.argv[1], 9999))
    except OSError:
        pass
    time.sleep(0.01)
"""


def test_when_wireguard_go_dies_nothing_leaves_in_cleartext_and_it_comes_back(world) -> None:
    c, lab = world["client"], world["lab"]
    sec = _by_node(c, SEC)
    a, b = sec["node1"], sec["node2"]
    node1 = _node_netns(lab, 1)
    # A host with a default route (the lab has none): without the output guard, encrypted
    # VXLAN would follow it in cleartext once the WireGuard interface and its route are gone.
    subprocess.run(["ip", "-n", node1, "route", "add", "default", "via", lab.ext_addr],
                   check=True)
    secret = "SHOALGAP" + secrets.token_hex(8)
    try:
        (old,) = _shoal_wireguard_go(lab, 1)

        def crash() -> None:
            spray = subprocess.Popen(["ip", "netns", "exec", netns(a), sys.executable, "-c",
                                      UDP_SPRAY, _ip(b), secret, "3"])
            time.sleep(0.3)
            os.kill(old, signal.SIGKILL)
            spray.wait(timeout=30)

        pcap = _capture(lab, crash)
    finally:
        subprocess.run(["ip", "-n", node1, "route", "del", "default"], check=True)
    assert secret.encode() not in pcap
    with tempfile.NamedTemporaryFile(suffix=".pcap") as f:
        f.write(pcap)
        f.flush()
        leaked = subprocess.run(["tcpdump", "-n", "-r", f.name, "udp port 4790"],
                                capture_output=True, text=True).stdout
    assert leaked == ""
    # The agent starts it again, reprograms it, and traffic flows.
    wait_for("a new wireguard-go", lambda: _shoal_wireguard_go(lab, 1) not in ([], [old]))
    try:
        wait_for("traffic again", lambda: in_task(a, sys.executable, "-c", UDP_ASK, _ip(b),
                                              str(UDP_PORT), "back").stdout.strip() == "back",
             timeout=20)
    except AssertionError:
        print(lab.log_file("node1").read_text()[-3000:])
        raise
    node = {n["Name"]: n for n in c.get(f"/networks/{SECNET}")["Encryption"]["Nodes"]}["node1"]
    assert node["Ready"] and node["Up"], node


def test_wireguard_go_dies_with_its_agent_even_on_sigkill(world) -> None:
    from shoal.lab import pid_of

    lab = world["lab"]
    assert _shoal_wireguard_go(lab, 2)
    os.kill(pid_of(lab, "node2"), signal.SIGKILL)  # the agent alone, not its group
    wait_for("wireguard-go gone", lambda: _shoal_wireguard_go(lab, 2) == [], timeout=5)
    start_agent(lab, 2)
    wait_for("node2's wireguard-go back", lambda: _shoal_wireguard_go(lab, 2), timeout=20)


def _wireguard_go_pid(lab: Lab, node: str) -> int:
    want = os.stat(f"/run/netns/{lab.node(node).netns}").st_ino
    for pid in subprocess.run(["pgrep", "-x", "wireguard-go"], capture_output=True,
                              text=True).stdout.split():
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == want:
                return int(pid)
        except FileNotFoundError:
            continue  # exited since pgrep saw it (another lab's, or one being replaced)
    raise AssertionError(f"no wireguard-go in {node}'s namespace")


def test_wireguard_go_gets_rps_and_large_socket_buffers(world) -> None:
    """docs/encryption.md, "Two things the agent does to its wireguard-go"."""
    import ctypes

    from shoal.dataplane.wireguard import SYS_PIDFD_GETFD, UDP_BUFFER, cpu_mask

    c, lab = world["client"], world["lab"]
    for node in ("node1", "node2"):
        ifname = _iface(c, node)
        rps = subprocess.run(["ip", "netns", "exec", lab.node(node).netns, "cat",
                              f"/sys/class/net/{ifname}/queues/rx-0/rps_cpus"],
                             capture_output=True, text=True).stdout.strip()
        assert rps.lstrip("0,") == cpu_mask(os.cpu_count() or 1).lstrip("0,")
        pid = _wireguard_go_pid(lab, node)
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
        sizes = []
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if not target.startswith("socket:["):
                    continue
                mine = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
                with socket.socket(fileno=mine) as sock:
                    if sock.type == socket.SOCK_DGRAM and sock.family in (socket.AF_INET,
                                                                          socket.AF_INET6):
                        sizes.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        finally:
            os.close(pidfd)
        # The kernel reports twice what was set (its bookkeeping overhead).
        assert sizes and all(size >= UDP_BUFFER for size in sizes), (node, sizes)
