"""The cluster's identity from the command line: `shoal init`, `shoal join`, `shoal swarm`,
`shoal user create` and `shoal audit` (docs/security.md)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

from shoal.cli.format import table
from shoal.client import Client
from shoal.errors import InvalidArgument

DEFAULT_STATE = "/var/lib/shoal"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """Docker's durations ("2160h", "1h30m", "90s"), plus "d" for days."""
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise InvalidArgument(f"invalid duration {text!r}: e.g. 2160h, 90m, 30s")
    return timedelta(seconds=total)


def _write_private(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


# --- init and join ---


def cmd_init(args: argparse.Namespace) -> int:
    from shoal.manager.security import init_cluster
    from shoal.store import SQLiteStore

    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(state / "store.db")
    try:
        cluster, made = init_cluster(
            store, state, args.advertise_addr, hostname=args.hostname or socket.gethostname(),
            lifetime=parse_duration(args.cert_expiry),
            agent_state_dir=Path(args.agent_state_dir) if args.agent_state_dir else None)
    finally:
        store.close()
    tokens = cluster["JoinTokens"]
    print(("Swarm initialized" if made else "Swarm already initialized")
          + f": cluster {cluster['ID']}, root CA in {state / 'ca'}.\n\n"
          f"To add a worker to this swarm, run:\n\n"
          f"    shoal join --token {tokens['Worker']} {args.advertise_addr}\n\n"
          f"To add a manager: `shoal swarm join-token manager`.")
    return 0


def cmd_join(args: argparse.Namespace) -> int:
    from shoal import ca

    token = args.token
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    if not token:
        raise InvalidArgument("give the join token with --token or --token-file")
    tls = Path(args.state_dir) / "tls"
    if args.fresh:
        for name in ("node.pem", "ca.crt"):
            (tls / name).unlink(missing_ok=True)
    previous = ca.NodeCredentials.load(tls) if ca.NodeCredentials.exists(tls) else None
    creds = asyncio.run(ca.request_join(
        args.manager, token, key=previous.key if previous else None,
        previous=previous.cert if previous else None))
    creds.save(tls)
    ident = creds.identity
    verb = "rejoined" if previous else "joined"
    print(f"This node {verb} a swarm as a {ident.spec_role} (node id {ident.name}); "
          f"certificate valid until {ident.not_after.isoformat(timespec='seconds')}.")
    return 0


# --- swarm, users, audit (through the API) ---


def cmd_swarm(args: argparse.Namespace, client: Client) -> int:
    swarm = client.get("/swarm")
    if args.swarm_cmd == "join-token":
        if args.rotate:
            flag = "rotateWorkerToken" if args.role == "worker" else "rotateManagerToken"
            client.request("POST", "/swarm/update", body=swarm["Spec"],
                           query={"version": swarm["Version"]["Index"], flag: "true"})
            swarm = client.get("/swarm")
        token = swarm["JoinTokens"]["Worker" if args.role == "worker" else "Manager"]
        if args.quiet:
            print(token)
        else:
            addr = swarm_addr(client)
            print(f"To add a {args.role} to this swarm, run the following command:\n\n"
                  f"    shoal join --token {token} {addr}")
    elif args.swarm_cmd == "update":
        spec = swarm["Spec"]
        spec["CAConfig"]["NodeCertExpiry"] = int(
            parse_duration(args.cert_expiry).total_seconds() * 1e9)
        client.request("POST", "/swarm/update", body=spec,
                       query={"version": swarm["Version"]["Index"]})
        print("Swarm updated.")
    return 0


def swarm_addr(client: Client) -> str:
    managers = client.get("/info")["Swarm"]["RemoteManagers"] or [{}]
    return managers[0].get("Addr", "MANAGER:2377")


def cmd_user(args: argparse.Namespace, client: Client) -> int:
    from shoal import ca

    if args.user_cmd == "ls":
        users = client.get("/shoal/v1/users")
        print(table(["NAME", "ROLE", "SERIAL", "EXPIRES"],
                    [[u["Name"], u["Role"], u["Serial"][:16], u["NotAfter"][:19]]
                     for u in users]))
        return 0
    if args.user_cmd == "rm":
        for name in args.names:
            revoked = client.request("DELETE", f"/shoal/v1/users/{name}")["Revoked"]
            print(f"user {name} removed: {revoked} certificate(s) revoked")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ca.new_key()
    answer = client.request("POST", "/shoal/v1/users", body={
        "name": args.name, "role": args.role, "csr": ca.make_csr(key).decode()})
    _write_private(out / "key.pem", ca.key_pem(key), 0o600)
    _write_private(out / "cert.pem", answer["cert"].encode(), 0o644)
    _write_private(out / "ca.pem", answer["ca"].encode(), 0o644)
    print(f"user {args.name} ({args.role}): {out}/key.pem, cert.pem, ca.pem\n"
          f"use with: DOCKER_HOST=tcp://{swarm_addr(client)} DOCKER_TLS_VERIFY=1 "
          f"DOCKER_CERT_PATH={out}")
    return 0


def cmd_audit(args: argparse.Namespace, client: Client) -> int:
    entries: list[dict[str, Any]] = client.get("/shoal/v1/audit", user=args.user,
                                               since=args.since)
    if args.format == "json":
        import json

        print(json.dumps(entries, indent=4))
        return 0
    print(table(["TIME", "USER", "ROLE", "ACTION", "TARGET", "STATUS", "MESSAGE"],
                [[e["Time"][:23], e["User"], e["Role"], e["Action"], e["Target"][:25],
                  str(e["Status"]), e["Message"][:60]] for e in entries]))
    return 0


def add_parsers(sub: Any) -> None:
    init = sub.add_parser("init", help="create a cluster: root CA, join tokens, first manager")
    init.add_argument("--state-dir", default=f"{DEFAULT_STATE}/manager")
    init.add_argument("--advertise-addr", required=True, metavar="ADDR:PORT",
                      help="the manager's cluster port as nodes will dial it")
    init.add_argument("--cert-expiry", default="2160h",
                      help="node certificate lifetime (default 2160h = 90 days; at least 1h)")
    init.add_argument("--hostname", help="this manager node's name (default: the host's)")
    init.add_argument("--agent-state-dir", metavar="DIR",
                      help="also give the agent on this host (state in DIR) this node's "
                      "identity")
    init.set_defaults(func=cmd_init)

    join = sub.add_parser("join", help="join a cluster: get this node's certificate")
    join.add_argument("manager", metavar="ADDR:PORT")
    join.add_argument("--token")
    join.add_argument("--token-file", help="read the token from a file (keeps it out of ps)")
    join.add_argument("--state-dir", default=f"{DEFAULT_STATE}/node")
    join.add_argument("--fresh", action="store_true",
                      help="forget the old identity first (a node that was removed)")
    join.set_defaults(func=cmd_join)

    swarm = sub.add_parser("swarm", help="join tokens, certificate lifetime")
    ssub = swarm.add_subparsers(dest="swarm_cmd", required=True)
    jt = ssub.add_parser("join-token")
    jt.add_argument("role", choices=["worker", "manager"])
    jt.add_argument("--rotate", action="store_true", help="refuse the old token from now on")
    jt.add_argument("-q", "--quiet", action="store_true", help="print the token only")
    up = ssub.add_parser("update")
    up.add_argument("--cert-expiry", required=True, metavar="DURATION")
    swarm.set_defaults(api=cmd_swarm)

    user = sub.add_parser("user", help="API users (client certificates with a role)")
    usub = user.add_subparsers(dest="user_cmd", required=True)
    uc = usub.add_parser("create")
    uc.add_argument("name")
    uc.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    uc.add_argument("--out", required=True, metavar="DIR",
                    help="where to write key.pem, cert.pem, ca.pem (docker's names)")
    usub.add_parser("ls", help="user certificates issued and not revoked")
    usub.add_parser("rm", help="revoke every certificate of the users, at once"
                    ).add_argument("names", nargs="+")
    user.set_defaults(api=cmd_user)

    audit = sub.add_parser("audit", help="who changed what, when, and the outcome")
    audit.add_argument("--user")
    audit.add_argument("--since", metavar="TIME", help="ISO time, e.g. 2026-11-25T22:00")
    audit.add_argument("--format", choices=["table", "json"], default="table")
    audit.set_defaults(api=cmd_audit)
