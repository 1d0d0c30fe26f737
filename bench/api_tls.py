"""The control plane's cost of mutual TLS: API latency over the cluster port vs the unix socket,
and the time for a node to join.

    .venv/bin/python bench/api_tls.py [--requests 2000 --connections 300 --joins 20]

Builds lab `bapi` (2 nodes; taken down at the end, also on failure) and an admin user. From
node2's namespace, one Python client (http.client, no other work) measures, interleaved in
rounds so drift hits both paths alike:
- keep-alive: GET /v1.47/_ping and GET /v1.47/services on one open connection;
- new connection per request: connect (+ the TLS 1.3 handshake with both certificates) + GET.
The unix socket is the same manager's, reached by path (the filesystem is shared).
Join: `request_join` in process (pin the CA over TLS, check the server, send the CSR, get the
certificate: 2 TLS connections and 1 ECDSA signature on the manager), then the whole
`shoal join` command (Python start-up included). Joined test nodes are removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal.client import Client
from shoal.lab import lab_down, lab_up

LAB = "bapi"

MEASURE = r"""
import http.client, json, os, socket, ssl, sys, time

addr, sock_path, certs = sys.argv[1:4]
n_req, n_conn = int(sys.argv[4]), int(sys.argv[5])
host, port = addr.rsplit(":", 1)
ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_cert_chain(os.path.join(certs, "cert.pem"), os.path.join(certs, "key.pem"))


class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sock_path)


def tls():
    return http.client.HTTPSConnection(host, int(port), context=ctx)


def unix():
    return Unix("localhost")


def get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    assert r.status == 200, r.status


def keepalive(make, path, n):
    conn = make()
    get(conn, path)  # warm
    out = []
    for _ in range(n):
        t = time.perf_counter()
        get(conn, path)
        out.append(time.perf_counter() - t)
    conn.close()
    return out


def fresh(make, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn = make()
        get(conn, "/v1.47/_ping")
        conn.close()
        out.append(time.perf_counter() - t)
    return out


res = {}
for rnd in range(5):
    for name, make in (("unix", unix), ("mtls", tls)):
        for path in ("/v1.47/_ping", "/v1.47/services"):
            key = f"{name} keep-alive {path}"
            res.setdefault(key, []).extend(keepalive(make, path, n_req // 5))
        res.setdefault(f"{name} new connection", []).extend(fresh(make, n_conn // 5))
print(json.dumps(res))
"""

JOIN = r"""
import asyncio, json, sys, time
from shoal import ca
addr, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
async def main():
    out, ids = [], []
    for _ in range(n):
        t = time.perf_counter()
        creds = await ca.request_join(addr, token)
        out.append(time.perf_counter() - t)
        ids.append(creds.identity.name)
    print(json.dumps({"times": out, "ids": ids}))
asyncio.run(main())
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def netns_python(lab, code: str, *args: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", lab.node("node2").netns, sys.executable,
                          "-c", code, *args], capture_output=True, text=True, timeout=600,
                         check=True, cwd=str(Path(__file__).resolve().parents[1]))
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--joins", type=int, default=20)
    args = ap.parse_args()
    lab_down(LAB)
    try:
        lab = lab_up(LAB, nodes=2)
        client = Client(lab.docker_host)
        with tempfile.TemporaryDirectory() as tmp:
            certs = Path(tmp) / "admin"
            subprocess.run([sys.executable, "-m", "shoal", "--host", lab.docker_host, "user",
                            "create", "bench", "--role", "admin", "--out", str(certs)],
                           check=True, capture_output=True)
            res = json.loads(netns_python(lab, MEASURE, lab.manager_addr,
                                          str(lab.docker_socket), str(certs),
                                          str(args.requests), str(args.connections)))
        print(f"{'path':44} {'p50 us':>8} {'p99 us':>8} {'ratio p50':>10}")
        for key, values in res.items():
            base = res[key.replace("mtls", "unix")]
            print(f"{key:44} {pct(values, .5) * 1e6:8.0f} {pct(values, .99) * 1e6:8.0f} "
                  f"{pct(values, .5) / pct(base, .5):9.2f}x")

        token = client.get("/swarm")["JoinTokens"]["Worker"]
        joins = json.loads(netns_python(lab, JOIN, lab.manager_addr, token, str(args.joins)))
        cli = []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                subprocess.run(["ip", "netns", "exec", lab.node("node2").netns, sys.executable,
                                "-m", "shoal", "join", lab.manager_addr, "--token", token,
                                "--state-dir", tmp], check=True, capture_output=True,
                               cwd=str(Path(__file__).resolve().parents[1]))
                cli.append(time.perf_counter() - t)
        times = joins["times"]
        print(f"\njoin, in process ({len(times)}): p50 {pct(times, .5) * 1e3:.1f} ms, "
              f"p99 {pct(times, .99) * 1e3:.1f} ms")
        print(f"`shoal join` command (3, Python start-up included): "
              f"{', '.join(f'{t * 1e3:.0f} ms' for t in cli)}")
        for node in client.get("/nodes"):
            if node["Status"]["State"] == "down":
                client.request("DELETE", f"/nodes/{node['ID']}")
    finally:
        lab_down(LAB)


if __name__ == "__main__":
    main()
