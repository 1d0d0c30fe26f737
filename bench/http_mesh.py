#!/usr/bin/env python3
"""The HTTP routing mesh against HAProxy, side by side in one run, on this machine.

Both proxies route Host `bench.test` round-robin to the same two backends (tiny uvloop servers
answering a fixed 200, so the backend is not the bottleneck), set X-Forwarded-For, -Proto and
-Host, and keep their backend connections alive. wrk measures each proxy in two modes:

- keep-alive: `wrk -t2 -c64 -d5s --latency -H 'Host: bench.test' http://127.0.0.1:PORT/`
- new connections: the same plus `-H 'Connection: close'` (a new TCP connection per request)

Targets: HAProxy with one thread per CPU and with one thread; the mesh with one worker per CPU
and with one worker. Every target and mode runs `--rounds` times, interleaved, so that load
from elsewhere on the machine hits all of them alike; the medians are reported, with the CPU
time the proxy (all its processes and threads) spent per request, and the ratios mesh/HAProxy
for like against like (all CPUs; one CPU). Nothing is pinned: the proxy, the backends and wrk
share the machine's CPUs.

Run from the repository: `.venv/bin/python bench/http_mesh.py [--duration 5] [--rounds 3]`.
Needs wrk and haproxy (`make setup` installs them). Every process it starts ends with it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shoal.mesh import MeshOptions, MeshProcess  # noqa: E402

HOST = "bench.test"
BODY = b"hello, mesh!\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (len(BODY), BODY))


# -- the backend: one process, a fixed answer per request head --------------------------------

class _Fixed(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        data = self.buf + data
        n = data.count(b"\r\n\r\n")  # bench requests have no body
        if n:
            self.transport.write(RESPONSE * n)  # type: ignore[attr-defined]
            data = data[data.rfind(b"\r\n\r\n") + 4 :]
        self.buf = data


async def _backend(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Fixed, "127.0.0.1", port, backlog=4096)
    os.write(1, b"ready\n")
    async with server:
        await asyncio.Event().wait()


def backend_main(port: int) -> None:
    import uvloop

    uvloop.run(_backend(port))


# -- harness ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


HAPROXY_CFG = """\
global
    maxconn 4096
{threads}
defaults
    mode http
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    option forwardfor
    http-reuse always
frontend mesh
    bind 127.0.0.1:{port}
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    use_backend bench if {{ hdr(host),field(1,:) -i {host} }}
    default_backend none
backend bench
    balance roundrobin
{servers}
backend none
    http-request return status 503 content-type text/plain string "no service"
"""


@dataclass
class Sample:
    rps: float
    p99_ms: float
    cpu_us: float  # CPU time of the proxy (all its processes and threads) per request


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants still running."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def wrk(port: int, pid: int, seconds: int, connections: int, threads: int,
        close: bool) -> Sample:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "-H", f"Host: {HOST}", *(["-H", "Connection: close"] if close else []),
            f"http://127.0.0.1:{port}/"]
    cpu0 = tree_cpu_seconds(pid)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    cpu = tree_cpu_seconds(pid) - cpu0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert m, out
    p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"  wrk reported: {errors.group(0)}", file=sys.stderr)
    return Sample(rps, p99, cpu / max(n, 1) * 1e6)


async def start_mesh(backends: list[int], workers: int) -> MeshProcess:
    mesh = MeshProcess(MeshOptions(http="127.0.0.1:0", https="none", workers=workers))
    await mesh.start()
    await mesh.set_routes({"http": {HOST: [f"127.0.0.1:{p}" for p in backends]}})
    return mesh


MODES = ("keep-alive", "new connections")


def median(samples: list[Sample]) -> Sample:
    return Sample(*(statistics.median(getattr(s, f) for s in samples)
                    for f in ("rps", "p99_ms", "cpu_us")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3,
                    help="every target and mode this many times, interleaved; medians reported")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.backend:
        backend_main(args.backend)
        return
    for tool in ("wrk", "haproxy"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: `make setup` installs it")
    cpus = os.cpu_count() or 1
    procs: list[subprocess.Popen[bytes]] = []
    loop = asyncio.new_event_loop()
    meshes: list[MeshProcess] = []
    tmp = tempfile.TemporaryDirectory(prefix="shoal-bench-mesh-")
    try:
        backends = [free_port(), free_port()]
        for port in backends:
            procs.append(subprocess.Popen([sys.executable, __file__, "--backend", str(port)],
                                          stdout=subprocess.DEVNULL))
        for port in backends:
            wait_port(port)

        targets: list[tuple[str, int, int]] = []  # name, port, pid
        for threads in sorted({cpus, 1}, reverse=True):
            hport = free_port()
            cfg = Path(tmp.name) / f"haproxy-{threads}.cfg"
            cfg.write_text(HAPROXY_CFG.format(
                port=hport, host=HOST, threads=f"    nbthread {threads}",
                servers="\n".join(f"    server b{i} 127.0.0.1:{p}"
                                  for i, p in enumerate(backends))))
            proc = subprocess.Popen(["haproxy", "-f", str(cfg)])
            procs.append(proc)
            wait_port(hport)
            targets.append((f"haproxy {threads} thread(s)", hport, proc.pid))
        for workers in sorted({cpus, 1}, reverse=True):
            mesh = loop.run_until_complete(start_mesh(backends, workers))
            meshes.append(mesh)
            assert mesh.http_address is not None and mesh.pid is not None
            targets.append((f"mesh {workers} worker(s)", mesh.http_address[1], mesh.pid))

        for _, port, pid in targets:  # warm-up: pools filled, code paths hot
            wrk(port, pid, 1, args.connections, args.threads, close=False)
        samples: dict[tuple[str, str], list[Sample]] = {}
        for rnd in range(args.rounds):
            for name, port, pid in targets:
                for mode in MODES:
                    s = wrk(port, pid, args.duration, args.connections, args.threads,
                            close=mode != "keep-alive")
                    samples.setdefault((name, mode), []).append(s)
                    print(f"round {rnd + 1} {name:<20} {mode:<16} {s.rps:8.0f} rps  "
                          f"p99 {s.p99_ms:6.2f} ms  {s.cpu_us:6.1f} us CPU/req", flush=True)
        report(samples, targets, cpus, args)
    finally:
        for mesh in meshes:
            loop.run_until_complete(mesh.stop())
        loop.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        tmp.cleanup()


def report(samples: dict[tuple[str, str], list[Sample]], targets: list[tuple[str, int, int]],
           cpus: int, args: argparse.Namespace) -> None:
    med = {key: median(v) for key, v in samples.items()}
    print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s, {cpus} CPUs, "
          f"medians of {args.rounds} interleaved rounds")
    print(f"{'':<20} | {'keep-alive rps':>14} {'p99 ms':>7} {'CPU us/req':>10} | "
          f"{'new-conn rps':>12} {'p99 ms':>7} {'CPU us/req':>10}")
    for name, _, _ in targets:
        ka, nc = med[(name, MODES[0])], med[(name, MODES[1])]
        print(f"{name:<20} | {ka.rps:14.0f} {ka.p99_ms:7.2f} {ka.cpu_us:10.1f} | "
              f"{nc.rps:12.0f} {nc.p99_ms:7.2f} {nc.cpu_us:10.1f}")
    print()
    for mesh, ref in ((f"mesh {cpus} worker(s)", f"haproxy {cpus} thread(s)"),
                      ("mesh 1 worker(s)", "haproxy 1 thread(s)")):
        if (mesh, MODES[0]) not in med or (ref, MODES[0]) not in med:
            continue
        parts = []
        for mode in MODES:
            m, r = med[(mesh, mode)], med[(ref, mode)]
            parts.append(f"{mode} rps {m.rps / r.rps:.2f}x, p99 {m.p99_ms / r.p99_ms:.2f}x, "
                         f"CPU/req {m.cpu_us / r.cpu_us:.2f}x")
        print(f"{mesh} / {ref}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
