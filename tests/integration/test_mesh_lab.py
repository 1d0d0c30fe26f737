"""The HTTP routing mesh in a real lab: by Host header and by TLS SNI, from the ext host, on
every node, including nodes with no task of the service."""

from __future__ import annotations

import subprocess
import time

import pytest

from shoal.client import Client
from tests.integration.test_cluster import running, wait_for
from tests.integration.test_lb import WHOAMI

# A TLS server that answers with its task's name; the certificate is made at start.
TLS_WHOAMI = """
import os, socket, ssl, subprocess, tempfile
d = tempfile.mkdtemp()
subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/CN=secure.example.org", "-keyout", d + "/k", "-out", d + "/c"],
               check=True, capture_output=True)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(d + "/c", d + "/k")
srv = socket.create_server(("", 443))
while True:
    conn, _ = srv.accept()
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(4096)
            body = os.environ["SHOAL_TASK_NAME"].encode() + b"\\n"
            tls.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n"
                        b"\\r\\n%s" % (len(body), body))
    except OSError:
        pass
"""


@pytest.fixture
def client(lab):
    return Client(lab.docker_host)


@pytest.fixture
def cleanup(client):
    yield
    for svc in client.get("/services"):
        client.request("DELETE", f"/services/{svc['ID']}")
    wait_for("tasks gone", lambda: not client.get("/tasks"), timeout=30)


def ext(lab, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", lab.ext_netns, *argv], capture_output=True,
                          text=True, timeout=20)


def service(client: Client, name: str, args: list[str], labels: dict[str, str]) -> None:
    client.request("POST", "/services/create", {
        "Name": name, "Labels": labels,
        "TaskTemplate": {"ContainerSpec": {"Image": "local", "Args": args}},
        "Mode": {"Replicated": {"Replicas": 1}}})


def test_http_mesh_routes_by_host_on_every_node(lab, client, cleanup):
    service(client, "app", ["python3", "-c", WHOAMI], {"shoal.http.host": "app.example.org"})
    wait_for("app running", lambda: running(client, "app", 1))
    start = time.monotonic()
    for node in lab.nodes:
        out = wait_for(f"{node.name} routes app", lambda n=node: (
            lambda r: r if r.stdout.startswith("app.1") else None)(ext(
                lab, "curl", "-s", "--max-time", "2", "-H", "Host: app.example.org",
                f"http://{n.addr}/")), timeout=10)
        assert out.stdout.split()[0] == "app.1"
    assert time.monotonic() - start < 10
    out = ext(lab, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
              "-H", "Host: nobody.example.org", f"http://{lab.nodes[0].addr}/")
    assert out.stdout == "503"
    # X-Forwarded-For carries the ext host's address to the task.
    out = ext(lab, "curl", "-s", "-H", "Host: app.example.org", "--max-time", "2",
              f"http://{lab.nodes[1].addr}/")
    assert out.stdout.split()[2] == lab.ext_addr


def test_https_mesh_routes_by_sni_without_terminating(lab, client, cleanup):
    service(client, "secure", ["python3", "-c", TLS_WHOAMI],
            {"shoal.https.host": "secure.example.org"})
    wait_for("secure running", lambda: running(client, "secure", 1))
    node = lab.nodes[2]
    out = wait_for("sni route", lambda: (lambda r: r if r.stdout.strip() == "secure.1" else None)(
        ext(lab, "curl", "-sk", "--max-time", "3", "--resolve",
            f"secure.example.org:443:{node.addr}", "https://secure.example.org/")), timeout=30)
    assert out.stdout.strip() == "secure.1"
    # The certificate the client saw is the task's own: TLS was not terminated by the mesh.
    cert = ext(lab, "sh", "-c", f"echo | openssl s_client -connect {node.addr}:443 "
               "-servername secure.example.org 2>/dev/null | openssl x509 -noout -subject")
    assert "secure.example.org" in cert.stdout


def test_a_removed_service_leaves_the_mesh_within_a_second(lab, client, cleanup):
    service(client, "app", ["python3", "-c", WHOAMI], {"shoal.http.host": "gone.example.org"})
    wait_for("app running", lambda: running(client, "app", 1))
    url = f"http://{lab.nodes[0].addr}/"
    wait_for("routed", lambda: ext(lab, "curl", "-s", "--max-time", "2", "-H",
                                   "Host: gone.example.org", url).stdout.startswith("app.1"))
    client.request("DELETE", "/services/app")
    start = time.monotonic()
    wait_for("503", lambda: ext(lab, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                "--max-time", "2", "-H", "Host: gone.example.org",
                                url).stdout == "503", timeout=5, every=0.05)
    assert time.monotonic() - start < 1.5
