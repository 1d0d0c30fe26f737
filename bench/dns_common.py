"""Shared pieces of the DNS benches: namespaces, the resolver process fed a synthetic view,
dnsmasq from a hosts file, dnsperf runs and their parsing. Root only; nothing outlives a run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shoal.model import view as nv  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load() -> str:
    """The machine's load averages (1, 5, 15 min): other sessions share these machines."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"


def sh(*argv: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, **kw)


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    """A throwaway namespace with lo up (127.0.0.0/8 on it), removed afterwards."""
    sh("ip", "netns", "del", name, check=False)
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        sh("ip", "netns", "del", name, check=False)


# --- a synthetic view: N services x M tasks on one network, one asker task ---


def synthetic_view(services: int, tasks: int, asker: str = "client") -> nv.NodeView:
    view = nv.empty_view({"id": "bnode", "name": "bnode", "addr": "198.18.0.11"})
    view["revision"] = 1
    view["networks"]["bnet"] = {"id": "bnet", "name": "bnet", "subnet": "10.128.0.0/9",
                                "gateway": "10.128.0.1", "vni": 4200, "internal": False,
                                "encrypted": False, "ingress": False}  # type: ignore[typeddict-unknown-key]
    n = 2
    for s in range(services):
        vip = _ip(n)
        n += 1
        sid = f"svc{s:05d}"
        view["services"][sid] = {"id": sid, "name": f"svc{s}", "endpoint_mode": "vip",
                                 "vips": {"bnet": vip}, "aliases": {"bnet": []}, "ports": []}
        for t in range(tasks):
            tid = f"t{s:05d}x{t:03d}"
            view["endpoints"][tid] = endpoint(tid, f"svc{s}.{t + 1}", sid, _ip(n))
            n += 1
    view["tasks"][asker] = {"id": asker, "name": "client.1", "service_id": "svc00000",
                            "service_name": "client", "slot": 1, "desired_state": "running",
                            "image": "local", "command": ["true"], "env": [], "dir": "",
                            "dns": {"nameservers": [], "search": [], "options": []},
                            "addrs": {"bnet": {"ip": _ip(n), "prefixlen": 9, "mac": ""}}}
    return view


def endpoint(tid: str, name: str, sid: str, ip: str, healthy: bool = True) -> nv.EndpointEntry:
    return {"id": tid, "name": name, "service_id": sid, "node_id": "bnode",
            "state": "running" if healthy else "failed", "healthy": healthy,
            "addrs": {"bnet": {"ip": ip, "prefixlen": 9, "mac": ""}}}


def _ip(n: int) -> str:
    n += 10 << 24 | 128 << 16
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))


def hosts_lines(view: nv.NodeView) -> list[str]:
    """The same cluster names as /etc/hosts lines, for dnsmasq."""
    lines = []
    for svc in view["services"].values():
        lines.append(f"{svc['vips']['bnet']} {svc['name']}")
    for ep in view["endpoints"].values():
        svc = view["services"][ep["service_id"]]["name"]
        ip = ep["addrs"]["bnet"]["ip"]
        lines.append(f"{ip} {ep['name']}")
        lines.append(f"{ip} tasks.{svc}")
    return lines


# --- the resolver process ---


class ResolverProc:
    """`python -m shoal.dns` in the calling namespace, driven over its control pipe."""

    def __init__(self, *args: str, netns_name: str | None = None) -> None:
        argv = [sys.executable, "-m", "shoal.dns", *args]
        if netns_name:
            argv = ["nsenter", f"--net=/run/netns/{netns_name}", "--", *argv]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        err = None if os.environ.get("BENCH_DEBUG") else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=err, env=env, cwd=ROOT)
        self.seq = 0

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        self.proc.stdin.flush()

    def call(self, msg: dict[str, Any]) -> Any:
        self.seq += 1
        self.send({**msg, "seq": self.seq})
        assert self.proc.stdout is not None
        reply = json.loads(self.proc.stdout.readline())
        if not reply.get("ok"):
            raise RuntimeError(f"resolver: {reply}")
        return reply.get("result")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ResolverProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def dnsmasq(ns: str, listen: str, hosts: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
         "--pid-file=", "--no-resolv", "--no-hosts", "--no-poll", f"--addn-hosts={hosts}",
         "--local=/#/", f"--listen-address={listen}", "--bind-interfaces", "--user=root",
         "--cache-size=10000", "--log-facility=/dev/null"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_answer(ns, listen, hosts.read_text().split()[1])
        yield proc
    finally:
        proc.terminate()
        proc.wait(5)


def wait_answer(ns: str, server: str, name: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh("ip", "netns", "exec", ns, "dig", f"@{server}", "+short", "+tries=1",
                 "+time=1", name, check=False).stdout.strip()
        if out and not out.startswith(";;"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{server} in {ns} does not answer {name}")


# --- dnsperf ---


def dnsperf(ns: str, server: str, queries: Path, seconds: float, rate: int | None = None,
            verbose: bool = False, outstanding: int = 100) -> dict[str, Any]:
    if shutil.which("dnsperf") is None:
        raise SystemExit("dnsperf is missing: apt-get install -y dnsperf (or make setup)")
    argv = ["ip", "netns", "exec", ns, "dnsperf", "-s", server, "-d", str(queries),
            "-l", str(seconds), "-c", "1", "-q", str(outstanding)]
    if rate:
        argv += ["-Q", str(rate)]
    if verbose:
        argv.append("-v")
    out = sh(*argv).stdout
    result: dict[str, Any] = {
        "qps": float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "avg": float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "lost": int(re.search(r"Queries lost:\s+(\d+)", out).group(1)),  # type: ignore[union-attr]
        "command": " ".join(argv),
    }
    if verbose:
        lat = sorted(float(m) for m in re.findall(r"^> \w+ \S+ \w+ ([\d.]+)$", out, re.M))
        result["p50"], result["p99"] = pct(lat, 50), pct(lat, 99)
        result["p999"] = pct(lat, 99.9)
    return result


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
