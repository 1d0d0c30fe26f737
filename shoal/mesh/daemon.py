"""The mesh process: `python -m shoal.mesh`, driven over stdin/stdout by the agent.

    python -m shoal.mesh --http 0.0.0.0:80 --https 0.0.0.0:443 [--workers N] [--debug]

stdout, first line, once listening:
    {"event": "ready", "http": "0.0.0.0:80", "https": "0.0.0.0:443", "pid": 123, "workers": 1}
stdin, one JSON object per line, each a complete table that replaces the last one at once:
    {"op": "routes", "seq": 7, "http": {"app.example.org": ["10.255.0.5:80", ...]},
     "https": {"secure.example.org": ["10.255.0.5:443"]}}
stdout, one answer per line:
    {"seq": 7, "ok": true, "result": {"http": 1, "https": 1}}
    {"seq": 7, "ok": false, "error": "http: 'a b' is not a host name"}  (the old table stays)

The process ends at stdin EOF (the agent closed the pipe or died) and on SIGTERM; it also asks
the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG), in case the pipe is shared.

With --workers N > 1 it starts N-1 more copies of itself, each with its own listening socket on
the same address (SO_REUSEPORT: the kernel spreads new connections over them), and passes every
control line on to them before answering; a worker that dies takes the whole process down with
an error, for the agent to restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from shoal.childproc import die_with_parent, raise_fd_limit
from shoal.errors import ShoalError
from shoal.mesh.routes import Addr, format_addr, parse_routes
from shoal.mesh.server import MeshConfig, MeshServer

log = logging.getLogger("shoal.mesh")


def parse_listen(text: str) -> Addr | None:
    """'0.0.0.0:80', '[::]:443', ':8080' (all IPv4), or 'none'."""
    if text in ("", "none", "off"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ADDR:PORT or 'none'")
    host = host.strip("[]") or "0.0.0.0"
    return (host, int(port))


def parser() -> argparse.ArgumentParser:
    d = MeshConfig()
    p = argparse.ArgumentParser(prog="python -m shoal.mesh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--http", type=parse_listen, default=("0.0.0.0", 80), metavar="ADDR:PORT",
                   help="where HTTP requests are routed by Host ('none' to disable)")
    p.add_argument("--https", type=parse_listen, default=("0.0.0.0", 443), metavar="ADDR:PORT",
                   help="where TLS is routed by SNI ('none' to disable)")
    p.add_argument("--workers", type=int, default=1, help="processes serving (SO_REUSEPORT)")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout)
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout)
    p.add_argument("--connect-timeout", type=float, default=d.connect_timeout)
    p.add_argument("--backend-idle-timeout", type=float, default=d.backend_idle_timeout)
    p.add_argument("--max-head", type=int, default=d.max_head)
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true")
    return p


def config_argv(config: MeshConfig) -> list[str]:
    return ["--header-timeout", str(config.header_timeout),
            "--idle-timeout", str(config.idle_timeout),
            "--connect-timeout", str(config.connect_timeout),
            "--backend-idle-timeout", str(config.backend_idle_timeout),
            "--max-head", str(config.max_head)]


def _config(args: argparse.Namespace) -> MeshConfig:
    return MeshConfig(header_timeout=args.header_timeout, idle_timeout=args.idle_timeout,
                      connect_timeout=args.connect_timeout,
                      backend_idle_timeout=args.backend_idle_timeout, max_head=args.max_head)


def _emit(msg: dict[str, Any]) -> None:
    os.write(1, json.dumps(msg, separators=(",", ":")).encode() + b"\n")


def handle_line(server: MeshServer, line: bytes) -> dict[str, Any] | None:
    """Apply one control line; the answer to print (None for a blank line)."""
    if not line.strip():
        return None
    seq = None
    try:
        doc = json.loads(line)
        if not isinstance(doc, dict):
            raise ValueError("expected a JSON object")
        seq = doc.pop("seq", None)
        op = doc.pop("op", "routes")
        if op != "routes":
            raise ValueError(f"unknown op {op!r}")
        table = parse_routes(doc)
    except (ValueError, ShoalError) as exc:
        return {"seq": seq, "ok": False, "error": str(exc)}
    server.set_routes(table)
    log.debug("routes: %s", json.dumps(table.to_json(), sort_keys=True))
    return {"seq": seq, "ok": True, "result": {"http": len(table.http), "https": len(table.https)}}


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes]) -> None:
    """A daemon thread: works for any stdin (pipe, file, tty). os.read, not sys.stdin: a
    daemon thread blocked inside a buffered reader aborts the interpreter at exit."""
    pending = b""
    while chunk := os.read(0, 1 << 20):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            loop.call_soon_threadsafe(queue.put_nowait, line + b"\n")
    if pending:
        loop.call_soon_threadsafe(queue.put_nowait, pending)
    loop.call_soon_threadsafe(queue.put_nowait, b"")


async def _start_worker(args: argparse.Namespace, server: MeshServer
                        ) -> asyncio.subprocess.Process:
    argv = [sys.executable, "-m", "shoal.mesh", "--reuse-port", "--workers", "1",
            "--http", format_addr(server.http_address) if server.http_address else "none",
            "--https", format_addr(server.https_address) if server.https_address else "none",
            *config_argv(server.config), *(["--debug"] if args.debug else [])]
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not line.startswith(b'{"event":"ready"'):
        proc.kill()
        await proc.wait()
        raise ShoalError(f"mesh worker did not start: {line!r}")
    return proc


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        if b'"ok":false' in line:
            log.warning("mesh worker %d: %s", proc.pid, line.decode().strip())


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    server = MeshServer(_config(args))
    reuse = args.reuse_port or args.workers > 1
    await server.start(args.http, args.https, reuse_port=reuse)
    gc.freeze()  # what start-up made lives forever: keep it out of every later collection
    workers: list[asyncio.subprocess.Process] = []
    tasks: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for _ in range(args.workers - 1):
            workers.append(await _start_worker(args, server))
        tasks += [asyncio.create_task(_drain(w)) for w in workers]
        _emit({"event": "ready", "pid": os.getpid(), "workers": args.workers,
               "http": format_addr(server.http_address) if server.http_address else None,
               "https": format_addr(server.https_address) if server.https_address else None})
        log.info("mesh up: http %s https %s, %d worker(s)", server.http_address,
                 server.https_address, args.workers)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        threading.Thread(target=_stdin_lines, args=(loop, queue), daemon=True).start()
        stopped = asyncio.create_task(stop.wait())
        waits = [asyncio.create_task(w.wait()) for w in workers]
        while True:
            line_task = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait([line_task, stopped, *waits],
                                         return_when=asyncio.FIRST_COMPLETED)
            if line_task not in done:
                line_task.cancel()
                if stopped in done:
                    return 0
                log.error("a mesh worker exited: stopping")
                return 1
            line = line_task.result()
            if not line:
                return 0  # stdin EOF: the agent is gone or done with us
            for w in workers:
                assert w.stdin is not None
                w.stdin.write(line)
                await w.stdin.drain()
            answer = handle_line(server, line)
            if answer is not None:
                _emit(answer)
    finally:
        for w in workers:
            if w.stdin is not None:
                w.stdin.close()  # EOF: the worker's own clean exit
        for w in workers:
            try:
                await asyncio.wait_for(w.wait(), 3)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    w.kill()
                await w.wait()
        for t in tasks:
            t.cancel()
        await server.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    die_with_parent()
    raise_fd_limit()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # still correct, only slower
        log.warning("uvloop is not installed: serving on the default asyncio loop")
        run = asyncio.run
    try:
        return run(serve(args))
    except OSError as exc:  # typically the port is taken
        log.error("mesh: %s", exc)
        return 2
