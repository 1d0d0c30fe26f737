"""The `shoal` command: the lab, the daemons, and the cluster through the manager's Docker API."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

from shoal.cli import cluster
from shoal.cli.format import ago, table
from shoal.client import Client
from shoal.errors import InvalidArgument, NotFound, ShoalError

DEFAULT_IMAGE = "local"  # shoal runs commands from the node's filesystem; the name is recorded


# --- helpers ---


def _client(args: argparse.Namespace) -> Client:
    if args.host:
        return Client(args.host)
    if not os.environ.get("DOCKER_HOST") and args.lab:
        return Client(f"unix:///run/shoal/{args.lab}/docker.sock")
    return Client()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=4))


def _kv(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid {what} {item!r}: expected key=value")
        out[key] = value
    return out


def _task_name(task: dict[str, Any], services: dict[str, dict[str, Any]]) -> str:
    svc = services.get(task["ServiceID"])
    name = svc["Spec"]["Name"] if svc else task["ServiceID"][:12]
    return f"{name}.{task.get('Slot') or task.get('NodeID', '')}"


def _addresses(task: dict[str, Any]) -> str:
    return ",".join(a for att in task.get("NetworksAttachments", []) for a in att["Addresses"])


# --- lab and daemons ---


def cmd_lab(args: argparse.Namespace) -> int:
    from shoal import lab, preflight

    if args.lab_cmd == "up":
        preflight.check()
        up = lab.lab_up(args.name, args.nodes)
        rows = [[n.name, n.netns, n.addr] for n in up.nodes]
        print(table(["NODE", "NAMESPACE", "ADDRESS"], rows))
        print(f"\nmanager: {up.manager_addr}\nexport DOCKER_HOST={up.docker_host}")
    elif args.lab_cmd == "down":
        lab.lab_down(args.name)
        print(f"lab {args.name} removed")
    else:
        status = lab.lab_status(args.name)
        if status is None:
            print(f"lab {args.name} is not up")
            return 1
        print(table(["NODE", "NAMESPACE", "ADDRESS"],
                    [[n.name, n.netns, n.addr] for n in status.nodes]))
        print(f"\nexport DOCKER_HOST={status.docker_host}")
    return 0


def cmd_manager(args: argparse.Namespace) -> int:
    from shoal.cli.daemons import run_manager
    from shoal.manager.keys import parse_interval

    rotation = parse_interval(args.encryption_key_rotation)
    asyncio.run(run_manager(args.state_dir, args.socket, args.listen, rotation))
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from shoal import preflight
    from shoal.cli.daemons import run_agent
    from shoal.dataplane.firewall import parse_sources
    from shoal.dns.process import DnsOptions

    preflight.check()
    control_from = parse_sources(args.control_from) if args.control_from else None
    upstreams = tuple(u for item in args.dns_upstream or [] for u in item.split(",") if u)
    dns = DnsOptions(upstreams=upstreams, vip_ttl=args.dns_vip_ttl, task_ttl=args.dns_task_ttl,
                     forward_timeout=args.dns_timeout, max_forwards=args.dns_max_forwards,
                     debug=args.debug)
    asyncio.run(run_agent(args.manager, args.hostname, args.addr, args.state_dir,
                          args.ns_prefix, dns, (args.mesh_http_port, args.mesh_https_port),
                          args.drain_delay, control_from, args.closed_node, args.wireguard_go,
                          args.wireguard_port))
    return 0


# --- nodes ---


def cmd_node(args: argparse.Namespace) -> int:
    c = _client(args)
    if args.node_cmd == "inspect":
        _print_json([c.find("node", ref) for ref in args.nodes])
        return 0
    if args.node_cmd == "rm":
        for ref in args.nodes:
            node = c.find("node", ref)
            c.request("DELETE", f"/nodes/{node['ID']}", query={"force": args.force or None})
            print(node["ID"])
        return 0
    if args.node_cmd in ("promote", "demote", "update"):
        for ref in args.nodes:
            node = c.find("node", ref)
            spec = node["Spec"]
            if args.node_cmd != "update":
                spec["Role"] = "manager" if args.node_cmd == "promote" else "worker"
            elif args.availability:
                spec["Availability"] = args.availability
            c.request("POST", f"/nodes/{node['ID']}/update", body=spec,
                      query={"version": node["Version"]["Index"]})
            print(f"Node {ref} updated" if args.node_cmd == "update" else
                  f"Node {ref} {args.node_cmd}d to {spec['Role']} in the swarm.")
        return 0
    nodes = c.get("/nodes")
    if args.format == "json":
        _print_json(nodes)
        return 0
    rows = []
    for n in nodes:
        ms = n.get("ManagerStatus")
        manager = ("Leader" if ms.get("Leader") else ms.get("Reachability", "")) if ms else ""
        rows.append([n["ID"][:25], n["Description"]["Hostname"], n["Status"]["State"].capitalize(),
                     n["Spec"]["Availability"].capitalize(), manager, n["Status"].get("Addr", "")])
    print(table(["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ADDRESS"], rows))
    return 0


# --- networks ---


def cmd_network(args: argparse.Namespace) -> int:
    c = _client(args)
    if args.net_cmd == "create":
        ipam: dict[str, Any] = {"Driver": "default", "Config": []}
        if args.subnet:
            config = {"Subnet": args.subnet}
            if args.gateway:
                config["Gateway"] = args.gateway
            ipam["Config"].append(config)
        out = c.request("POST", "/networks/create", {
            "Name": args.name, "Driver": args.driver, "Internal": args.internal,
            "Attachable": args.attachable, "IPAM": ipam, "Options": _kv(args.opt, "option"),
            "Labels": _kv(args.label, "label")})
        print(out["Id"])
    elif args.net_cmd == "ls":
        nets = c.get("/networks")
        if args.format == "json":
            _print_json(nets)
            return 0
        rows = [[n["Id"][:12], n["Name"], n["Driver"], n["Scope"],
                 ",".join(cfg["Subnet"] for cfg in n["IPAM"]["Config"])] for n in nets]
        print(table(["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET"], rows))
    elif args.net_cmd == "inspect":
        _print_json([c.find("network", ref) for ref in args.networks])
    elif args.net_cmd == "rm":
        for ref in args.networks:
            c.request("DELETE", f"/networks/{ref}")
            print(ref)
    return 0


# --- services ---


def _network_attachment(value: str) -> dict[str, Any]:
    """`appnet` or Docker's long form `name=appnet,alias=db,alias=db2`."""
    if "=" not in value:
        return {"Target": value}
    target, aliases = "", []
    for part in value.split(","):
        key, _, val = part.partition("=")
        if key in ("name", "target"):
            target = val
        elif key == "alias":
            aliases.append(val)
        else:
            raise InvalidArgument(f"invalid network option {key!r} in {value!r}")
    if not target:
        raise InvalidArgument(f"network {value!r} names no network: use name=NET")
    return {"Target": target, "Aliases": aliases}


def _publish(value: str) -> dict[str, Any]:
    """Docker's forms: 8080:80, 80 (a port from 30000-32767), 8080:80/udp, and the long form
    mode=host,published=8080,target=80,protocol=tcp."""
    try:
        if "=" in value:
            fields = dict(part.split("=", 1) for part in value.split(","))
            port = {"TargetPort": int(fields.pop("target")),
                    "PublishedPort": int(fields.pop("published", 0)),
                    "Protocol": fields.pop("protocol", "tcp"),
                    "PublishMode": fields.pop("mode", "ingress")}
            if fields:
                raise ValueError(f"unknown field {sorted(fields)[0]!r}")
            return port
        ports, _, proto = value.partition("/")
        published, _, target = ports.rpartition(":")
        return {"TargetPort": int(target), "PublishedPort": int(published or 0),
                "Protocol": proto or "tcp", "PublishMode": "ingress"}
    except (ValueError, KeyError) as exc:
        raise InvalidArgument(f"invalid --publish {value!r}: {exc}; use PUBLISHED:TARGET[/udp] "
                              "or mode=host,published=P,target=T") from exc


def cmd_service(args: argparse.Namespace) -> int:  # noqa: C901 - one branch per subcommand
    c = _client(args)
    sub = args.svc_cmd
    if sub == "create":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        container: dict[str, Any] = {"Image": args.image, "Args": command,
                                     "Env": args.env or []}
        if args.workdir:
            container["Dir"] = args.workdir
        if args.dns or args.dns_search or args.dns_option:
            container["DNSConfig"] = {"Nameservers": args.dns or [],
                                      "Search": args.dns_search or [],
                                      "Options": args.dns_option or []}
        if args.health_cmd:
            container["Healthcheck"] = {
                "Test": ["CMD-SHELL", args.health_cmd],
                "Interval": int(args.health_interval * 1e9),
                "Timeout": int(args.health_timeout * 1e9), "Retries": args.health_retries,
                "StartPeriod": int(args.health_start_period * 1e9)}
        if args.stop_grace_period is not None:
            container["StopGracePeriod"] = int(args.stop_grace_period * 1e9)
        restart: dict[str, Any] = {"Condition": args.restart_condition}
        if args.restart_delay is not None:
            restart["Delay"] = int(args.restart_delay * 1e9)
        if args.restart_max_attempts is not None:
            restart["MaxAttempts"] = args.restart_max_attempts
        mode: dict[str, Any] = ({"Global": {}} if args.mode == "global"
                                else {"Replicated": {"Replicas": args.replicas}})
        spec = {"Name": args.name, "Labels": _kv(args.label, "label"),
                "TaskTemplate": {"ContainerSpec": container, "RestartPolicy": restart,
                                 "Networks": [_network_attachment(n) for n in args.network or []]},
                "Mode": mode, "EndpointSpec": {
                    "Mode": args.endpoint_mode,
                    "Ports": [_publish(p) for p in args.publish or []]}}
        out = c.request("POST", "/services/create", spec)
        print(out["ID"])
    elif sub == "ls":
        services = c.get("/services", status="true")
        if args.format == "json":
            _print_json(services)
            return 0
        rows = []
        for s in services:
            st = s.get("ServiceStatus", {})
            mode = "replicated" if "Replicated" in s["Spec"]["Mode"] else "global"
            ports = ",".join(
                f"{'*' if p['PublishMode'] == 'ingress' else 'host'}:{p['PublishedPort']}->"
                f"{p['TargetPort']}/{p['Protocol']}" for p in s.get("Endpoint", {}).get(
                    "Ports", []))
            rows.append([s["ID"][:12], s["Spec"]["Name"], mode,
                         f"{st.get('RunningTasks', 0)}/{st.get('DesiredTasks', 0)}",
                         s["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"], ports])
        print(table(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], rows))
    elif sub == "ps":
        svc = c.find("service", args.service)
        tasks = c.get("/tasks", filters=json.dumps({"service": {svc["ID"]: True}}))
        if args.format == "json":
            _print_json(tasks)
            return 0
        nodes = {n["ID"]: n["Description"]["Hostname"] for n in c.get("/nodes")}
        services = {svc["ID"]: svc}
        tasks.sort(key=lambda t: (t.get("Slot", 0), t["DesiredState"] != "running",
                                  t["CreatedAt"]), reverse=False)
        rows = []
        for t in tasks:
            st = t["Status"]
            rows.append([t["ID"][:12], _task_name(t, services), nodes.get(t.get("NodeID", ""), ""),
                         t["DesiredState"].capitalize(),
                         f"{st['State'].capitalize()} {ago(st['Timestamp'])}",
                         _addresses(t), st.get("Err", "")])
        print(table(["ID", "NAME", "NODE", "DESIRED STATE", "CURRENT STATE", "ADDRESSES",
                     "ERROR"], rows))
    elif sub == "inspect":
        _print_json([c.find("service", ref) for ref in args.services])
    elif sub == "scale":
        for item in args.scales:
            name, sep, count = item.partition("=")
            if not sep or not count.isdigit():
                raise InvalidArgument(f"invalid scale {item!r}: expected SERVICE=REPLICAS")
            svc = c.find("service", name)
            spec = svc["Spec"]
            if "Replicated" not in spec["Mode"]:
                raise InvalidArgument(f"{name}: scale can only be used with replicated services")
            spec["Mode"]["Replicated"]["Replicas"] = int(count)
            c.request("POST", f"/services/{svc['ID']}/update", spec,
                      query={"version": svc["Version"]["Index"]})
            print(f"{name} scaled to {count}")
    elif sub == "rm":
        for ref in args.services:
            c.request("DELETE", f"/services/{ref}")
            print(ref)
    elif sub == "logs":
        svc = c.find("service", args.service)
        data = c.request("GET", f"/services/{svc['ID']}/logs",
                         query={"stdout": 1, "stderr": 1, "tail": args.tail}, raw=True)
        _write_multiplexed(data)
    return 0


def _write_multiplexed(data: bytes) -> None:
    pos = 0
    while pos + 8 <= len(data):
        stream, size = data[pos], int.from_bytes(data[pos + 4:pos + 8], "big")
        chunk = data[pos + 8:pos + 8 + size]
        (sys.stderr if stream == 2 else sys.stdout).buffer.write(chunk)
        pos += 8 + size
    sys.stdout.flush()


# --- exec ---


def find_task(c: Client, ref: str) -> dict[str, Any]:
    """A task by id (or unique prefix) or by name: service.slot, or service.slot.taskid."""
    name, _, rest = ref.rpartition(".") if ref.count(".") >= 1 else ("", "", ref)
    parts = ref.split(".")
    if len(parts) >= 2:
        service_name, slot = ".".join(parts[:-1]), parts[-1]
        if len(parts) >= 3 and not slot.isdigit():
            service_name, slot = ".".join(parts[:-2]), parts[-2]
        if slot.isdigit():
            tasks = c.get("/tasks", filters=json.dumps({"service": [service_name],
                                                        "desired-state": ["running"]}))
            tasks = [t for t in tasks if str(t.get("Slot")) == slot]
            if tasks:
                return tasks[-1]
    del name, rest
    try:
        return c.find("task", ref)
    except NotFound:
        raise NotFound(f"no running task {ref!r}: give a task id or service.slot") from None


def cmd_exec(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise InvalidArgument("give a command to run: shoal exec TASK -- CMD ...")
    task = find_task(_client(args), args.task)
    netns = task["Status"].get("ContainerStatus", {}).get("ContainerID")
    if task["Status"]["State"] != "running" or not netns:
        raise InvalidArgument(f"task {args.task} is {task['Status']['State']}, not running")
    if not os.path.exists(f"/run/netns/{netns}"):
        raise NotFound(f"task {args.task} runs on another machine: its namespace {netns} is "
                       "not here")
    os.execvp("ip", ["ip", "netns", "exec", netns, *command])
    return 127


def cmd_demo(args: argparse.Namespace) -> int:
    from shoal.cli.demo import run_demo

    return run_demo(args.name, args.nodes)


# --- parser ---


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shoal", description=__doc__)
    p.add_argument("--host", "-H", help="manager API (unix:///path or tcp://host:port); "
                   "default: $DOCKER_HOST, else the lab's socket")
    p.add_argument("--lab", default="shoal", help="lab whose manager to talk to (default shoal)")
    p.add_argument("--debug", action="store_true", help="log what is being programmed")
    sub = p.add_subparsers(dest="cmd", required=True)

    lab = sub.add_parser("lab", help="a cluster of nodes in namespaces on this machine")
    lsub = lab.add_subparsers(dest="lab_cmd", required=True)
    up = lsub.add_parser("up", help="build the lab (idempotent)")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--name", default="shoal")
    for name in ("down", "status"):
        lsub.add_parser(name).add_argument("--name", default="shoal")
    lab.set_defaults(func=cmd_lab)

    demo = sub.add_parser("demo", help="bring up a lab and walk through what shoal does")
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--name", default="shoal")
    demo.set_defaults(func=cmd_demo)

    man = sub.add_parser("manager", help="run the manager (the lab starts it)")
    man.add_argument("--state-dir", required=True)
    man.add_argument("--socket", required=True)
    man.add_argument("--listen", required=True, help="ADDR:PORT for agents")
    man.add_argument("--encryption-key-rotation", metavar="DURATION",
                     default=os.environ.get("SHOAL_ENCRYPTION_KEY_ROTATION", "12h"),
                     help="how often the encrypted overlays' preshared key is replaced "
                          "(default 12h, at least 1m; env SHOAL_ENCRYPTION_KEY_ROTATION)")
    man.set_defaults(func=cmd_manager)

    ag = sub.add_parser("agent", help="run a node's agent (the lab starts it)")
    ag.add_argument("--manager", required=True, help="ADDR:PORT")
    ag.add_argument("--hostname", required=True)
    ag.add_argument("--addr", required=True, help="this node's underlay address")
    ag.add_argument("--state-dir", required=True)
    ag.add_argument("--ns-prefix", default="shoal-")
    ag.add_argument("--dns-upstream", action="append", metavar="IP[:PORT][,...]",
                    help="where the node's resolver sends names it does not know (up to 3, "
                    "in order; repeat or comma-separate); default: the node's /etc/resolv.conf "
                    "without loopback addresses")
    ag.add_argument("--dns-vip-ttl", type=int, default=600, metavar="SECONDS",
                    help="TTL of answers that name a service VIP (default 600)")
    ag.add_argument("--dns-task-ttl", type=int, default=0, metavar="SECONDS",
                    help="TTL of answers that name task addresses (default 0: never cached)")
    ag.add_argument("--dns-timeout", type=float, default=2.0, metavar="SECONDS",
                    help="how long to wait for each upstream (default 2)")
    ag.add_argument("--mesh-http-port", type=int, default=80, metavar="PORT",
                    help="the HTTP routing mesh's port on this node (0: no mesh)")
    ag.add_argument("--mesh-https-port", type=int, default=443, metavar="PORT",
                    help="the routing mesh's TLS (SNI) port on this node (0: none)")
    ag.add_argument("--drain-delay", type=float, default=1.0, metavar="SECONDS",
                    help="a stopping task keeps serving this long after it left every load "
                    "balancer, before it gets SIGTERM (default 1)")
    ag.add_argument("--closed-node", action="store_true",
                    help="drop everything arriving on the underlay that shoal does not need "
                    "(for dedicated nodes: it also cuts ssh); default: close only shoal's ports")
    ag.add_argument("--control-from", action="append", metavar="ADDR|CIDR|FIRST-LAST",
                    help="on the manager's node, who may reach its port besides the known "
                    "nodes: the addresses nodes join from (repeat or comma-separate); "
                    "default: anyone")
    ag.add_argument("--dns-max-forwards", type=int, default=256, metavar="N",
                    help="forwarded queries in flight; beyond, REFUSED (default 256)")
    ag.add_argument("--wireguard-go", metavar="PATH",
                    default=os.environ.get("SHOAL_WIREGUARD_GO", "wireguard-go"),
                    help="the wireguard-go binary for encrypted overlays (env "
                         "SHOAL_WIREGUARD_GO); without it the node carries none of them")
    ag.add_argument("--wireguard-port", type=int, default=51820, metavar="PORT",
                    help="UDP port of the node's WireGuard interface (default 51820)")
    ag.set_defaults(func=cmd_agent)

    node = sub.add_parser("node", help="cluster nodes")
    nsub = node.add_subparsers(dest="node_cmd", required=True)
    nsub.add_parser("ls").add_argument("--format", choices=["table", "json"], default="table")
    nsub.add_parser("inspect").add_argument("nodes", nargs="+")
    rm = nsub.add_parser("rm", help="remove nodes; their certificates are revoked at once")
    rm.add_argument("nodes", nargs="+")
    rm.add_argument("-f", "--force", action="store_true", help="also a node that is up")
    nsub.add_parser("promote", help="make workers managers (a new certificate follows)"
                    ).add_argument("nodes", nargs="+")
    nsub.add_parser("demote", help="make managers workers (a new certificate follows)"
                    ).add_argument("nodes", nargs="+")
    nu = nsub.add_parser("update")
    nu.add_argument("--availability", choices=["active", "pause", "drain"])
    nu.add_argument("nodes", nargs="+")
    node.set_defaults(func=cmd_node)

    net = sub.add_parser("network", help="overlay networks")
    netsub = net.add_subparsers(dest="net_cmd", required=True)
    create = netsub.add_parser("create")
    create.add_argument("name")
    create.add_argument("-d", "--driver", default="overlay")
    create.add_argument("--subnet")
    create.add_argument("--gateway")
    create.add_argument("--internal", action="store_true")
    create.add_argument("--attachable", action="store_true")
    create.add_argument("-o", "--opt", action="append", metavar="K=V")
    create.add_argument("--label", action="append", metavar="K=V")
    netsub.add_parser("ls").add_argument("--format", choices=["table", "json"], default="table")
    netsub.add_parser("inspect").add_argument("networks", nargs="+")
    netsub.add_parser("rm").add_argument("networks", nargs="+")
    net.set_defaults(func=cmd_network)

    svc = sub.add_parser("service", help="services")
    ssub = svc.add_subparsers(dest="svc_cmd", required=True)
    sc = ssub.add_parser("create")
    sc.add_argument("--name", required=True)
    sc.add_argument("--image", default=DEFAULT_IMAGE, help="recorded and shown; shoal runs "
                    "the command from the node's filesystem")
    sc.add_argument("--replicas", type=int, default=1)
    sc.add_argument("--mode", choices=["replicated", "global"], default="replicated")
    sc.add_argument("--network", action="append", metavar="NET|name=NET,alias=A")
    sc.add_argument("-e", "--env", action="append", metavar="K=V")
    sc.add_argument("-w", "--workdir")
    sc.add_argument("--dns", action="append", metavar="IP",
                    help="upstream DNS server for this service's tasks (replaces the node's)")
    sc.add_argument("--dns-search", action="append", metavar="DOMAIN")
    sc.add_argument("--dns-option", action="append", metavar="OPT", help="e.g. ndots:2")
    sc.add_argument("--label", action="append", metavar="K=V")
    sc.add_argument("-p", "--publish", action="append", metavar="PUBLISHED:TARGET",
                    help="publish a port on every node (the routing mesh); also "
                    "mode=host,published=P,target=T")
    sc.add_argument("--health-cmd", metavar="CMD", help="run in the task's namespace; "
                    "exit 0 means healthy")
    sc.add_argument("--health-interval", type=float, default=30.0, metavar="SECONDS")
    sc.add_argument("--health-timeout", type=float, default=30.0, metavar="SECONDS")
    sc.add_argument("--health-retries", type=int, default=3)
    sc.add_argument("--health-start-period", type=float, default=0.0, metavar="SECONDS")
    sc.add_argument("--stop-grace-period", type=float, metavar="SECONDS",
                    help="between SIGTERM and SIGKILL (default 10)")
    sc.add_argument("--endpoint-mode", choices=["vip", "dnsrr"], default="vip")
    sc.add_argument("--restart-condition", choices=["none", "on-failure", "any"], default="any")
    sc.add_argument("--restart-delay", type=float, metavar="SECONDS")
    sc.add_argument("--restart-max-attempts", type=int)
    sc.add_argument("command", nargs=argparse.REMAINDER)
    ls = ssub.add_parser("ls")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ps = ssub.add_parser("ps")
    ps.add_argument("service")
    ps.add_argument("--format", choices=["table", "json"], default="table")
    ssub.add_parser("inspect").add_argument("services", nargs="+")
    ssub.add_parser("scale").add_argument("scales", nargs="+", metavar="SERVICE=REPLICAS")
    ssub.add_parser("rm").add_argument("services", nargs="+")
    lg = ssub.add_parser("logs")
    lg.add_argument("service")
    lg.add_argument("--tail", default="all")
    svc.set_defaults(func=cmd_service)

    cluster.add_parsers(sub)

    ex = sub.add_parser("exec", help="run a command inside a task's network namespace")
    ex.add_argument("task", help="task id, or service.slot")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.debug:
        logging.getLogger("aiohttp").setLevel(logging.WARNING)
    try:
        if hasattr(args, "api"):
            return args.api(args, _client(args))
        return args.func(args)
    except ShoalError as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
