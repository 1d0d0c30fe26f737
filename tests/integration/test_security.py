"""The control plane's security in a real lab: mutual TLS on the cluster port, join tokens,
certificate renewal and expiry (with key rotation, over an encrypted network), revocation,
role changes, RBAC and the audit log.

Every call here goes from inside a lab node's namespace to the manager's cluster port
(198.18.0.11:2377), the way a remote user or a node would make it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from shoal import ca
from shoal.client import Client
from shoal.lab import processes
from tests.integration.test_cluster import in_task, running, shoal, wait_for

CALL = r"""
import http.client, json, os, ssl, sys
addr, method, path, cert_dir, body = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=os.path.join(cert_dir, "ca.pem"))
ctx.check_hostname = False  # the lab's manager certificate names 198.18.0.11; dialled so
if os.path.exists(os.path.join(cert_dir, "cert.pem")):
    ctx.load_cert_chain(os.path.join(cert_dir, "cert.pem"), os.path.join(cert_dir, "key.pem"))
try:
    conn = http.client.HTTPSConnection(addr, context=ctx, timeout=10)
    conn.request(method, path, body=body or None, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    try:
        msg = json.loads(data)
    except ValueError:
        msg = data.decode(errors="replace")
    print(json.dumps({"status": resp.status, "body": msg}))
except Exception as exc:
    print(json.dumps({"status": 0, "body": f"{type(exc).__name__}: {exc}"}))
"""


def call(lab, cert_dir: Path, method: str, path: str, body: object = None,
         node: str = "node2") -> tuple[int, object]:
    """An HTTPS request to the manager from `node`'s namespace with the certificates in
    `cert_dir` (ca.pem, and cert.pem + key.pem unless anonymous)."""
    out = subprocess.run(
        ["ip", "netns", "exec", lab.node(node).netns, sys.executable, "-c", CALL,
         lab.manager_addr, method, path, str(cert_dir), json.dumps(body) if body else ""],
        capture_output=True, text=True, timeout=30)
    result = json.loads(out.stdout)
    return result["status"], result["body"]


def node_cert_dir(lab, node: str, tmp_path: Path) -> Path:
    """A node's own credentials under the names the docker CLI uses."""
    src = lab.node_state_dir(node) / "tls"
    out = tmp_path / f"{node}-certs"
    out.mkdir(exist_ok=True)
    shutil.copy(src / "node.pem", out / "cert.pem")
    shutil.copy(src / "node.pem", out / "key.pem")
    shutil.copy(src / "ca.crt", out / "ca.pem")
    return out


def user(lab, name: str, role: str, tmp_path: Path) -> Path:
    out = tmp_path / name
    shoal(lab, "user", "create", name, "--role", role, "--out", str(out))
    return out


def manager_log(lab) -> str:
    return lab.log_file("manager").read_text()


def worker_token(lab) -> str:
    return Client(lab.docker_host).get("/swarm")["JoinTokens"]["Worker"]


def join(lab, node: str, token: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", lab.node(node).netns, sys.executable, "-m", "shoal", "join",
         lab.manager_addr, "--token", token, "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=60)


# --- the lab is init plus joins, over mutual TLS ---


def test_lab_nodes_hold_certificates_of_the_cluster_ca(lab):
    cluster = Client(lab.docker_host).get("/swarm")
    nodes = {n["Description"]["Hostname"]: n for n in Client(lab.docker_host).get("/nodes")}
    root = ca.load_cert(lab.manager_state_dir / "ca" / "root.crt")
    assert cluster["TLSInfo"]["TrustRoot"] == ca.cert_pem(root).decode()
    for node in lab.nodes:
        creds = ca.NodeCredentials.load(lab.node_state_dir(node) / "tls")
        ident = ca.Trust(root).verify(creds.cert)
        assert ident.name == nodes[node.name]["ID"]  # CN: the node id
        assert ident.cluster_id == cluster["ID"]  # O: the cluster
        assert ident.spec_role == nodes[node.name]["Spec"]["Role"]  # OU: the role
        assert nodes[node.name]["Status"]["State"] == "ready"
    assert nodes["node1"]["Spec"]["Role"] == "manager"
    assert {nodes["node2"]["Spec"]["Role"], nodes["node3"]["Spec"]["Role"]} == {"worker"}


def test_the_docker_cli_over_mutual_tls_with_a_user_certificate(lab, tmp_path):
    certs = user(lab, "carol", "admin", tmp_path)
    env = {"DOCKER_HOST": f"tcp://{lab.manager_addr}", "DOCKER_TLS_VERIFY": "1",
           "DOCKER_CERT_PATH": str(certs), "PATH": "/usr/local/bin:/usr/bin:/bin",
           "HOME": str(tmp_path)}
    out = subprocess.run(["ip", "netns", "exec", lab.node("node2").netns, "env", "-i",
                          *[f"{k}={v}" for k, v in env.items()], "docker", "node", "ls"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert all(n.name in out.stdout for n in lab.nodes)


# --- bad input: each refused with a clear error, logged, nothing changed ---


def test_plaintext_on_the_tls_port_is_refused_and_logged(lab):
    out = subprocess.run(["ip", "netns", "exec", lab.node("node2").netns, "curl", "-sS",
                          "--max-time", "5", f"http://{lab.manager_addr}/v1.47/info"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and '"Swarm"' not in out.stdout
    wait_for("the refusal in the manager's log",
             lambda: "spoke plaintext HTTP to the TLS port" in manager_log(lab), timeout=5)


def test_a_certificate_from_another_ca_is_refused(lab, tmp_path):
    other = ca.Authority.create("othercluster")
    key = ca.new_key()
    cert = other.issue_user(ca.make_csr(key), "mallory", "admin")
    certs = tmp_path / "mallory"
    certs.mkdir()
    (certs / "cert.pem").write_bytes(ca.cert_pem(cert))
    (certs / "key.pem").write_bytes(ca.key_pem(key))
    shutil.copy(lab.manager_state_dir / "ca" / "root.crt", certs / "ca.pem")
    status, body = call(lab, certs, "GET", "/v1.47/nodes")
    assert status == 0, body  # the handshake fails: no HTTP answer at all
    wait_for("the refusal in the manager's log",
             lambda: "its certificate is from another CA" in manager_log(lab), timeout=5)


def test_an_expired_certificate_is_refused(lab, tmp_path):
    root = ca.RootCA.load(lab.manager_state_dir / "ca")
    key = ca.new_key()
    cert = root.sign_user(ca.make_csr(key), "olduser", "admin", lifetime=timedelta(seconds=1),
                          allow_short=True)
    certs = tmp_path / "olduser"
    certs.mkdir()
    (certs / "cert.pem").write_bytes(ca.cert_pem(cert))
    (certs / "key.pem").write_bytes(ca.key_pem(key))
    shutil.copy(lab.manager_state_dir / "ca" / "root.crt", certs / "ca.pem")
    time.sleep(1.5)
    status, _ = call(lab, certs, "GET", "/v1.47/nodes")
    assert status == 0
    wait_for("the refusal in the manager's log",
             lambda: "its certificate has expired" in manager_log(lab), timeout=5)


def test_no_certificate_reaches_only_the_ca_and_the_join(lab, tmp_path):
    anon = tmp_path / "anon"
    anon.mkdir()
    shutil.copy(lab.manager_state_dir / "ca" / "root.crt", anon / "ca.pem")
    status, body = call(lab, anon, "GET", "/v1.47/services")
    assert status == 401 and "certificate" in body["message"]
    status, body = call(lab, anon, "GET", "/shoal/v1/ca")
    assert status == 200 and "BEGIN CERTIFICATE" in body


def test_wrong_and_rotated_tokens_are_refused_and_change_nothing(lab, tmp_path):
    c = Client(lab.docker_host)
    before = {n["ID"] for n in c.get("/nodes")}
    old = worker_token(lab)
    wrong = old[:-5] + ("00000" if not old.endswith("00000") else "11111")
    out = join(lab, "node3", wrong, tmp_path / "wrong")
    assert out.returncode == 1 and "rotated" in out.stderr, out.stderr
    shoal(lab, "swarm", "join-token", "--rotate", "worker")
    new = worker_token(lab)
    assert new != old
    out = join(lab, "node3", old, tmp_path / "old")
    assert out.returncode == 1 and "refused" in out.stderr, out.stderr
    assert not (tmp_path / "old" / "tls" / "node.pem").exists()
    assert {n["ID"] for n in c.get("/nodes")} == before
    # A token of another CA names the digest mismatch before sending any secret.
    other = ca.JoinTokens.generate(ca.Authority.create("x").root.digest).token("worker")
    out = join(lab, "node3", other, tmp_path / "other")
    assert out.returncode == 1 and "pins" in out.stderr, out.stderr
    # The new token works; the node it makes is removed again (and revoked).
    out = join(lab, "node3", new, tmp_path / "new")
    assert out.returncode == 0, out.stderr
    extra = ca.NodeCredentials.load(tmp_path / "new" / "tls").identity.name
    shoal(lab, "node", "rm", extra)
    assert {n["ID"] for n in c.get("/nodes")} == before


def test_rbac_roles_and_the_audit_log(lab, tmp_path):
    viewer = user(lab, "vera", "viewer", tmp_path)
    operator = user(lab, "otto", "operator", tmp_path)
    status, body = call(lab, viewer, "GET", "/v1.47/services")
    assert status == 200
    status, body = call(lab, viewer, "POST", "/v1.47/networks/create",
                        {"Name": "vnet", "Driver": "overlay"})
    assert status == 403 and "vera (viewer) may not" in body["message"]
    status, body = call(lab, operator, "POST", "/v1.47/networks/create",
                        {"Name": "onet", "Driver": "overlay"})
    assert status == 201, body
    status, body = call(lab, operator, "DELETE", f"/v1.47/nodes/{lab.nodes[1].name}")
    assert status == 403 and "needs role admin" in body["message"]
    status, body = call(lab, operator, "POST", "/v1.47/swarm/update?version=1&"
                        "rotateWorkerToken=true", {})
    assert status == 403
    # Join tokens are for admins only.
    status, body = call(lab, viewer, "GET", "/v1.47/swarm")
    assert status == 200 and body["JoinTokens"] == {"Worker": "", "Manager": ""}
    status, body = call(lab, operator, "DELETE", "/v1.47/networks/onet")
    assert status == 204
    # A worker's node certificate may not call manager operations, even reads.
    worker = node_cert_dir(lab, "node2", tmp_path)
    status, body = call(lab, worker, "GET", "/v1.47/services")
    assert status == 403 and "swarm-worker" in body["message"]
    status, body = call(lab, worker, "POST", "/v1.47/networks/create", {"Name": "wnet"})
    assert status == 403
    assert "wnet" not in {n["Name"] for n in Client(lab.docker_host).get("/networks")}

    audit = json.loads(shoal(lab, "audit", "--format", "json").stdout)
    seen = {(e["User"], e["Action"].split(" ")[0], e["Target"], e["Status"]) for e in audit}
    assert ("vera", "POST", "vnet", 403) in seen
    assert ("otto", "POST", "onet", 201) in seen
    assert ("otto", "DELETE", "onet", 204) in seen
    assert ("otto", "DELETE", lab.nodes[1].name, 403) in seen
    assert any(e["User"].startswith("node ") and e["Outcome"] == "denied" for e in audit)
    assert all(e["Time"] and e["Outcome"] in ("allowed", "denied", "failed") for e in audit)
    reads = [e for e in audit if e["Action"].startswith("GET ")]
    assert reads == []  # reads are not changes
    # Only admins read the audit log.
    status, _ = call(lab, operator, "GET", "/shoal/v1/audit")
    assert status == 403

    # `shoal user rm` revokes at once: the next request with that certificate is refused.
    assert "otto" in shoal(lab, "user", "ls").stdout
    shoal(lab, "user", "rm", "otto")
    status, body = call(lab, operator, "GET", "/v1.47/services")
    assert status == 401 and "user otto removed" in body["message"]
    assert "otto" not in shoal(lab, "user", "ls").stdout


def test_promote_and_demote_reissue_the_certificate(lab):
    tls = lab.node_state_dir("node3") / "tls"
    shoal(lab, "node", "promote", "node3")
    try:
        wait_for("a manager certificate on node3", lambda: ca.NodeCredentials.load(
            tls).identity.role == ca.MANAGER, timeout=10)
    finally:
        shoal(lab, "node", "demote", "node3")
    wait_for("a worker certificate on node3", lambda: ca.NodeCredentials.load(
        tls).identity.role == ca.WORKER, timeout=10)
    node = Client(lab.docker_host).find("node", "node3")
    assert node["Spec"]["Role"] == "worker" and node["Status"]["State"] == "ready"
    assert "ManagerStatus" not in node
    out = shoal(lab, "node", "demote", "node1", check=False)
    assert out.returncode == 1 and "last manager" in out.stderr


# --- renewal, expiry, revocation: a lab of its own with short certificates ---

CLIENT_LOOP = r"""
import sys, time, urllib.request
end = time.monotonic() + float(sys.argv[2])
ok = bad = 0
errors = []
while time.monotonic() < end:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2).read()
        ok += 1
    except Exception as exc:
        bad += 1
        errors.append(repr(exc))
    time.sleep(0.02)
print(ok, bad, errors[:3])
"""


@pytest.fixture
def short_lab(make_lab, monkeypatch):
    """Certificates of 8 s and a preshared key rotated every 3 s (both test-only settings)."""
    monkeypatch.setenv(ca.SHORT_LIFETIME_ENV, "1")
    monkeypatch.setenv("SHOAL_TEST_SHORT_ROTATION", "1")
    monkeypatch.setenv("SHOAL_ENCRYPTION_KEY_ROTATION", "3s")
    return make_lab(nodes=2, cert_expiry="8s")


def test_renewal_expiry_rejoin_and_revocation(short_lab):
    lab = short_lab
    c = Client(lab.docker_host)
    shoal(lab, "network", "create", "--opt", "encrypted", "back")
    shoal(lab, "service", "create", "--name", "web", "--replicas", "2", "--network", "back",
          "python3", "-m", "http.server", "80")
    shoal(lab, "service", "create", "--name", "client", "--network", "back",
          "sleep", "infinity")
    wait_for("web running", lambda: running(c, "web", 2))
    client = wait_for("client running", lambda: running(c, "client", 1))[0]
    serials = {n.name: ca.NodeCredentials.load(lab.node_state_dir(n) / "tls").cert.serial_number
               for n in lab.nodes}
    connected = manager_log(lab).count(" connected")
    dropped = manager_log(lab).count(" disconnected")

    generation = c.get("/swarm")["Shoal"]["Encryption"]["Generation"]

    # 1. Over an encrypted network, certificates living 8 s (renewed at 4-6.4 s) and a
    # preshared key rotated every 3 s: 20 s of requests through the VIP see several renewals
    # on every node and the manager, several rotations, and not one error or dropped session.
    out = in_task(client, sys.executable, "-c", CLIENT_LOOP, "http://web/", "20", timeout=60)
    ok, bad = map(int, out.stdout.split()[:2])
    assert ok > 100 and bad == 0, out.stdout + out.stderr
    assert c.get("/swarm")["Shoal"]["Encryption"]["Generation"] >= generation + 4
    for n in lab.nodes:
        creds = ca.NodeCredentials.load(lab.node_state_dir(n) / "tls")
        assert creds.cert.serial_number != serials[n.name]
        assert creds.check()  # in date: renewed, not expired
        assert "certificate renewed" in lab.log_file(n.name).read_text()
    # No session was dropped or opened again.
    assert manager_log(lab).count(" connected") == connected
    assert manager_log(lab).count(" disconnected") == dropped

    # 2. A node offline past its expiry: a clear error, then `shoal join` brings it back
    # under the same node id.
    node2 = lab.nodes[1]
    node_id = ca.NodeCredentials.load(lab.node_state_dir(node2) / "tls").identity.name
    processes.stop_agent(lab, node2)
    time.sleep(9)
    processes.start_agent(lab, node2)
    wait_for("the expiry explained in node2's log", lambda: "rejoin" in lab.log_file(
        node2.name).read_text() and "expired" in lab.log_file(node2.name).read_text(),
        timeout=10)
    out = join(lab, node2.name, worker_token(lab), lab.node_state_dir(node2))
    assert out.returncode == 0 and "rejoined" in out.stdout, out.stderr
    wait_for("node2 ready again", lambda: c.find("node", node_id)["Status"]["State"] == "ready",
             timeout=15)

    # 3. node rm revokes at once: the session is closed and nothing it holds is accepted.
    shoal(lab, "node", "rm", "--force", node2.name)
    wait_for("node2's session closed", lambda: f"node {node_id} disconnected" in
             manager_log(lab), timeout=5)
    time.sleep(1)
    assert node_id not in {n["ID"] for n in c.get("/nodes")}
    assert "revoked" in manager_log(lab)
    # Its rejoin with the old identity is refused too.
    out = join(lab, node2.name, worker_token(lab), lab.node_state_dir(node2))
    assert out.returncode == 1 and "revoked" in out.stderr, out.stderr
    # The service moved to the node that is left.
    wait_for("web back to 2 on node1", lambda: running(c, "web", 2), timeout=30)
