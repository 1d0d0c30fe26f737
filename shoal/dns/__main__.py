"""`python -m shoal.dns`: one node's resolver, a child of that node's agent.

The agent starts it in the node's namespace and drives it over stdin (control.py); it exits
when stdin closes, and also (PR_SET_PDEATHSIG) when the agent dies, so it never outlives it.
It runs on uvloop when uvloop is installed: the resolver is a separate process precisely so that
it can (pyroute2, which the agent uses, breaks under uvloop), and so that the agent's work
(netlink, starting tasks) never holds the GIL while a query waits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys

from shoal.childproc import die_with_parent, raise_fd_limit
from shoal.dns import resolvconf
from shoal.dns.control import Control
from shoal.dns.forward import Forwarder
from shoal.dns.records import TASK_TTL, VIP_TTL, Ttls
from shoal.dns.server import Server
from shoal.dns.tables import Tables, parse_upstreams

log = logging.getLogger("shoal.dns")

CONTROL_LINE_LIMIT = 1 << 30  # a full view of a large cluster is one line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shoal.dns", description=__doc__)
    p.add_argument("--upstream", action="append", default=[], metavar="IP[:PORT]",
                   help="where other names go (up to 3, in order); default: this node's "
                   "/etc/resolv.conf without loopback addresses")
    p.add_argument("--vip-ttl", type=int, default=VIP_TTL, help="TTL of VIP answers (s)")
    p.add_argument("--task-ttl", type=int, default=TASK_TTL,
                   help="TTL of task address answers (s)")
    p.add_argument("--forward-timeout", type=float, default=2.0,
                   help="seconds to wait for each upstream")
    p.add_argument("--max-forwards", type=int, default=256,
                   help="forwards in flight; beyond, queries get REFUSED")
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--debug", action="store_true")
    return p


async def serve(args: argparse.Namespace) -> None:
    upstreams = parse_upstreams(args.upstream or resolvconf.node_nameservers())
    server = Server(Tables(Ttls(args.vip_ttl, args.task_ttl), upstreams),
                    Forwarder(args.forward_timeout, args.max_forwards))
    control = Control(server)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CONTROL_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    log.info("resolver up (%s loop), upstreams %s", args.loop,
             ", ".join(f"{h}:{p}" for h, p in upstreams) or "none")
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            reply = await control.handle_line(line)
            if reply is not None:
                os.write(1, json.dumps(reply).encode() + b"\n")
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    die_with_parent()
    raise_fd_limit()
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed: serving on the default asyncio loop")
            args.loop = "asyncio"
        else:
            uvloop.run(serve(args))
            return 0
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
