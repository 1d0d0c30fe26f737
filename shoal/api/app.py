"""The Docker Engine API, swarm subset, as an aiohttp application.

Every route answers with or without the `/v1.NN` prefix. Errors are `{"message": ...}` with the
status Docker uses, so the docker CLI prints them as it prints Docker's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import struct
from collections import Counter
from typing import Any

from aiohttp import web

import shoal
from shoal import ca
from shoal.api import encryption
from shoal.api import filters as flt
from shoal.api.access import CALLER, access_middleware
from shoal.errors import Conflict, InvalidArgument, NotFound, ShoalError, Unavailable
from shoal.manager import Manager
from shoal.manager.keys import public_cluster
from shoal.manager.security import REVOCATIONS, USERS, ClusterSecurity
from shoal.model.objects import Obj, network_resource

log = logging.getLogger("shoal.api")

API_VERSION = "1.47"
MIN_API_VERSION = "1.24"
V = r"/{_v:(?:v[0-9.]+/)?}"  # the optional version prefix

manager_key = web.AppKey("manager", Manager)


def mgr(request: web.Request) -> Manager:
    return request.app[manager_key]


def ok(data: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": with "; charset=utf-8" the docker CLI prints error bodies raw.
    return web.Response(body=json.dumps(data).encode() + b"\n", status=status,
                        headers={"Content-Type": "application/json"})


def error(status: int, message: str) -> web.Response:
    return ok({"message": message}, status)


def truthy(value: str | None) -> bool:
    """Docker's reading of a boolean query parameter (the SDK sends True/False)."""
    return value is not None and value.lower() not in ("", "0", "no", "false", "none")


async def body_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise InvalidArgument("a JSON body is required")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"malformed JSON in the request body: {exc}") from exc


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ShoalError as exc:
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.path, exc)
        return error(exc.status, str(exc))
    except web.HTTPNotFound:
        return error(404, f"page not found: {request.path}")
    except web.HTTPMethodNotAllowed:
        return error(405, f"method {request.method} not allowed on {request.path}")


# --- system ---


def _ping_headers() -> dict[str, str]:
    return {"API-Version": API_VERSION, "OSType": "linux", "Docker-Experimental": "false",
            "Swarm": "active/manager", "Cache-Control": "no-cache, no-store, must-revalidate",
            "Pragma": "no-cache"}


async def ping(request: web.Request) -> web.Response:
    body = "" if request.method == "HEAD" else "OK"
    return web.Response(text=body, headers=_ping_headers(), content_type="text/plain")


def _version() -> Obj:
    return {
        "Platform": {"Name": "shoal"},
        "Components": [{"Name": "Engine", "Version": shoal.__version__,
                        "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
                                    "Os": "linux", "Arch": "amd64"}}],
        "Version": shoal.__version__, "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION, "GitCommit": "", "GoVersion": "",
        "Os": "linux", "Arch": "amd64", "KernelVersion": platform.release(),
        "BuildTime": "",
    }


async def version(request: web.Request) -> web.Response:
    return ok(_version())


async def info(request: web.Request) -> web.Response:
    m = mgr(request)
    nodes = list(m.store.peek("node"))
    tasks = list(m.store.peek("task"))
    me = next((n for n in nodes if n["Spec"]["Role"] == "manager"
               and n.get("ManagerStatus", {}).get("Leader")), None)
    running = sum(1 for t in tasks if t["Status"]["State"] == "running")
    managers = [n for n in nodes if n["Spec"]["Role"] == "manager"]
    return ok({
        "ID": m.cluster["ID"], "Containers": len(tasks), "ContainersRunning": running,
        "ContainersPaused": 0, "ContainersStopped": len(tasks) - running, "Images": 0,
        "Driver": "shoal", "DriverStatus": [], "Plugins": {"Volume": [], "Network": ["overlay"],
                                                           "Authorization": None, "Log": []},
        "MemoryLimit": False, "SwapLimit": False, "CpuCfsPeriod": False, "CpuCfsQuota": False,
        "CPUShares": False, "CPUSet": False, "PidsLimit": False, "IPv4Forwarding": True,
        "Debug": False, "NFd": 0, "OomKillDisable": False, "NGoroutines": 0,
        "SystemTime": m.cluster["UpdatedAt"], "LoggingDriver": "json-file",
        "CgroupDriver": "none", "CgroupVersion": "2", "NEventsListener": 0,
        "KernelVersion": platform.release(), "OperatingSystem": "shoal",
        "OSVersion": "", "OSType": "linux", "Architecture": platform.machine(),
        "IndexServerAddress": "", "RegistryConfig": None, "NCPU": os.cpu_count() or 1,
        "MemTotal": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "GenericResources": None, "DockerRootDir": "", "HttpProxy": "", "HttpsProxy": "",
        "NoProxy": "", "Name": me["Description"]["Hostname"] if me else "shoal",
        "Labels": [], "ExperimentalBuild": False, "ServerVersion": shoal.__version__,
        "Runtimes": {}, "DefaultRuntime": "", "LiveRestoreEnabled": False,
        "Isolation": "", "InitBinary": "", "SecurityOptions": [], "Warnings": None,
        "Swarm": {
            "NodeID": me["ID"] if me else "", "NodeAddr": me["Status"]["Addr"] if me else "",
            "LocalNodeState": "active", "ControlAvailable": True, "Error": "",
            "RemoteManagers": [{"NodeID": n["ID"], "Addr": n["ManagerStatus"]["Addr"]}
                               for n in managers if "ManagerStatus" in n],
            "Nodes": len(nodes), "Managers": len(managers),
            # Docker's ClusterInfo: no join tokens (GET /swarm gives them to admins).
            "Cluster": {k: v for k, v in public_cluster(m.cluster).items()
                        if k not in ("JoinTokens", REVOCATIONS, USERS)},
        },
    })


async def swarm_inspect(request: web.Request) -> web.Response:
    cluster = dict(public_cluster(mgr(request).cluster))
    cluster.pop(REVOCATIONS, None)
    cluster.pop(USERS, None)
    caller = request.get(CALLER)
    if caller is None or not caller.is_admin or "JoinTokens" not in cluster:
        cluster["JoinTokens"] = {"Worker": "", "Manager": ""}  # tokens are for admins only
    return ok(cluster)


def _security(request: web.Request) -> ClusterSecurity:
    security = mgr(request).security
    if security is None:
        raise Unavailable("this manager has no cluster CA: run `shoal init` and restart it")
    return security


async def swarm_update(request: web.Request) -> web.Response:
    """`docker swarm join-token --rotate` and `docker swarm update --cert-expiry`."""
    security = _security(request)
    spec = await body_json(request)
    cluster = mgr(request).cluster
    version = request.query.get("version", "")
    if version != str(cluster["Version"]["Index"]):
        raise Conflict(f"update out of sequence: the swarm is at version "
                       f"{cluster['Version']['Index']}, not {version or '(none)'}")
    expiry = ((spec or {}).get("CAConfig") or {}).get("NodeCertExpiry") if isinstance(
        spec, dict) else None
    if expiry is not None and expiry != cluster["Spec"]["CAConfig"]["NodeCertExpiry"]:
        security.set_cert_expiry(int(expiry))
    for role, flag in (("worker", "rotateWorkerToken"), ("manager", "rotateManagerToken")):
        if truthy(request.query.get(flag)):
            security.rotate_token(role)
    return web.Response(status=200)


# --- the cluster CA on the cluster port (docs/security.md) ---


async def ca_cert(request: web.Request) -> web.Response:
    return web.Response(body=_security(request).authority.root.cert_pem,
                        headers={"Content-Type": "application/x-pem-file"})


async def join(request: web.Request) -> web.Response:
    return ok(_security(request).join(await body_json(request), str(request.remote or "")))


async def renew(request: web.Request) -> web.Response:
    ident = ca.authorize(request, ca.MANAGER, ca.WORKER)
    if ident is None:
        raise InvalidArgument("renewal is for nodes, over mutual TLS on the cluster port")
    return ok(_security(request).renew(ident, await body_json(request)))


async def user_create(request: web.Request) -> web.Response:
    return ok(_security(request).issue_user(await body_json(request)), status=201)


async def user_list(request: web.Request) -> web.Response:
    return ok(_security(request).users())


async def user_remove(request: web.Request) -> web.Response:
    revoked = _security(request).remove_user(request.match_info["id"])
    return ok({"Revoked": revoked})


async def audit_read(request: web.Request) -> web.Response:
    audit = mgr(request).audit
    if audit is None:
        raise Unavailable("this manager keeps no audit log")
    return ok(audit.read(user=request.query.get("user"), since=request.query.get("since")))


async def distribution(request: web.Request) -> web.Response:
    # shoal runs no images, so there is no registry to resolve a digest from; the docker CLI
    # prints a warning and goes on with the tag it was given.
    raise NotFound(f"image {request.match_info['name']}: shoal resolves no image digests")


# --- nodes ---


async def node_list(request: web.Request) -> web.Response:
    f = flt.parse(request.query.get("filters"),
                  ("id", "name", "role", "membership", "label", "node.label"))
    out = [n for n in mgr(request).store.list("node")
           if flt.match(f, "id", lambda v, n=n: n["ID"].startswith(v))
           and flt.match(f, "name", lambda v, n=n: n["Description"]["Hostname"] == v)
           and flt.match(f, "role", lambda v, n=n: n["Spec"]["Role"] == v)
           and flt.match(f, "membership", lambda v: v == "accepted")
           and flt.labels_match(f.get("node.label", set()), n["Spec"].get("Labels") or {})]
    return ok(sorted(out, key=lambda n: n["Description"]["Hostname"]))


async def node_inspect(request: web.Request) -> web.Response:
    return ok(mgr(request).control.find("node", request.match_info["id"]))


async def node_update(request: web.Request) -> web.Response:
    """`docker node promote/demote/update`: a new certificate follows a role change."""
    node = mgr(request).control.find("node", request.match_info["id"])
    try:
        version = int(request.query.get("version", ""))
    except ValueError:
        raise InvalidArgument("the version query parameter is required") from None
    _security(request).update_node(node["ID"], version, await body_json(request))
    return web.Response(status=200)


async def node_remove(request: web.Request) -> web.Response:
    """`docker node rm`: the node's certificates are refused from this moment."""
    node = mgr(request).control.find("node", request.match_info["id"])
    _security(request).remove_node(node["ID"], truthy(request.query.get("force")))
    return web.Response(status=200)


# --- networks ---


async def network_list(request: web.Request) -> web.Response:
    f = flt.parse(request.query.get("filters"),
                  ("id", "name", "driver", "scope", "type", "label", "dangling"))
    out = []
    for net in mgr(request).store.list("network"):
        res = network_resource(net)
        if flt.match(f, "id", lambda v, r=res: r["Id"].startswith(v)) \
                and flt.match(f, "name", lambda v, r=res: v in r["Name"]) \
                and flt.match(f, "driver", lambda v: v == "overlay") \
                and flt.match(f, "scope", lambda v: v == "swarm") \
                and flt.match(f, "type", lambda v: v == "custom") \
                and flt.labels_match(f.get("label", set()), res["Labels"]):
            out.append(res)
    return ok(sorted(out, key=lambda r: r["Name"]))


async def network_inspect(request: web.Request) -> web.Response:
    m = mgr(request)
    net = m.control.find("network", request.match_info["id"])
    out = network_resource(net)
    if encryption.is_encrypted(net):
        out["Encryption"], out["Peers"] = await encryption.status(m, net)
    return ok(out)


async def network_create(request: web.Request) -> web.Response:
    net = mgr(request).control.create_network(await body_json(request))
    return ok({"Id": net["ID"], "Warning": ""}, status=201)


async def network_remove(request: web.Request) -> web.Response:
    mgr(request).control.remove_network(request.match_info["id"])
    return web.Response(status=204)


# --- services ---


def _service_status(m: Manager, svc: Obj, counts: Counter[tuple[str, str]]) -> Obj:
    mode = svc["Spec"]["Mode"]
    if "Replicated" in mode:
        desired = mode["Replicated"]["Replicas"]
    else:
        desired = sum(1 for n in m.store.peek("node") if n["Status"]["State"] == "ready")
    return {"RunningTasks": counts[(svc["ID"], "running")], "DesiredTasks": desired,
            "CompletedTasks": counts[(svc["ID"], "complete")]}


async def service_list(request: web.Request) -> web.Response:
    m = mgr(request)
    f = flt.parse(request.query.get("filters"), ("id", "name", "label", "mode"))
    counts: Counter[tuple[str, str]] = Counter()
    if truthy(request.query.get("status")):
        for task in m.store.peek("task"):
            if task["DesiredState"] == "running":
                counts[(task["ServiceID"], task["Status"]["State"])] += 1
    out = []
    for svc in m.store.list("service"):
        spec = svc["Spec"]
        if not (flt.match(f, "id", lambda v, s=svc: s["ID"].startswith(v))
                and flt.match(f, "name", lambda v, s=spec: s["Name"].startswith(v))
                and flt.match(f, "mode", lambda v, s=spec: v.capitalize() in s["Mode"])
                and flt.labels_match(f.get("label", set()), spec.get("Labels") or {})):
            continue
        if truthy(request.query.get("status")):
            svc["ServiceStatus"] = _service_status(m, svc, counts)
        out.append(svc)
    return ok(sorted(out, key=lambda s: s["Spec"]["Name"]))


async def service_inspect(request: web.Request) -> web.Response:
    return ok(mgr(request).control.find("service", request.match_info["id"]))


async def service_create(request: web.Request) -> web.Response:
    svc = mgr(request).control.create_service(await body_json(request))
    return ok({"ID": svc["ID"], "Warnings": None}, status=201)


async def service_update(request: web.Request) -> web.Response:
    m = mgr(request)
    rollback = request.query.get("rollback") == "previous"
    m.control.update_service(request.match_info["id"], request.query.get("version"),
                             None if rollback else await body_json(request), rollback)
    return ok({"Warnings": None})


async def service_remove(request: web.Request) -> web.Response:
    mgr(request).control.remove_service(request.match_info["id"])
    return web.Response(status=200)


# --- tasks ---


def _task_filter(m: Manager, f: flt.Filters) -> list[Obj]:
    services = {s["ID"]: s for s in m.store.peek("service")}

    def service_ids(refs: set[str]) -> set[str]:
        out = set()
        for ref in refs:
            try:
                out.add(m.control.find("service", ref)["ID"])
            except ShoalError:
                continue
        return out

    def node_ids(refs: set[str]) -> set[str]:
        out = set()
        for ref in refs:
            try:
                out.add(m.control.find("node", ref)["ID"])
            except ShoalError:
                continue
        return out

    want_services = service_ids(f["service"]) if "service" in f else None
    want_nodes = node_ids(f["node"]) if "node" in f else None
    out = []
    for task in m.store.list("task"):
        svc = services.get(task["ServiceID"])
        name = f"{svc['Spec']['Name']}.{task.get('Slot') or task.get('NodeID')}" if svc else ""
        if want_services is not None and task["ServiceID"] not in want_services:
            continue
        if want_nodes is not None and task.get("NodeID") not in want_nodes:
            continue
        if not (flt.match(f, "id", lambda v, t=task: t["ID"].startswith(v))
                and flt.match(f, "name", lambda v, n=name: n.startswith(v))
                and flt.match(f, "desired-state", lambda v, t=task: t["DesiredState"] == v
                              or (v == "shutdown" and t["DesiredState"] == "remove"))
                and flt.labels_match(f.get("label", set()), task.get("Labels") or {})):
            continue
        if "_up-to-date" in f and svc is not None \
                and task["Spec"] != svc["Spec"]["TaskTemplate"]:
            continue
        out.append(task)
    return out


async def task_list(request: web.Request) -> web.Response:
    m = mgr(request)
    f = flt.parse(request.query.get("filters"), ("id", "name", "service", "node", "label",
                                                  "desired-state", "_up-to-date", "runtime"))
    bad = f.get("desired-state", set()) - {"running", "shutdown", "accepted"}
    if bad:
        raise InvalidArgument(f"invalid filter 'desired-state={sorted(bad)[0]}'")
    return ok(_task_filter(m, f))


async def task_inspect(request: web.Request) -> web.Response:
    return ok(mgr(request).control.find("task", request.match_info["id"]))


# --- logs ---


def _frame(stream: int, data: bytes) -> bytes:
    """Docker's multiplexed stream: 1 byte stream id, 3 zero bytes, 4 bytes big-endian size."""
    return struct.pack(">BxxxL", stream, len(data)) + data


async def _logs(request: web.Request, tasks: list[Obj]) -> web.StreamResponse:
    m = mgr(request)
    q = request.query
    tail = q.get("tail", "all")
    try:
        tail_n = None if tail in ("all", "") else int(tail)
    except ValueError as exc:
        raise InvalidArgument(f"invalid tail {tail!r}") from exc
    details = truthy(q.get("details"))
    timestamps = truthy(q.get("timestamps"))
    streams = {1: truthy(q.get("stdout")), 2: truthy(q.get("stderr"))}
    by_node: dict[str, list[Obj]] = {}
    for task in tasks:
        if task.get("NodeID"):
            by_node.setdefault(task["NodeID"], []).append(task)
    resp = web.StreamResponse(headers={"Content-Type": "application/vnd.docker.multiplexed-stream"})
    await resp.prepare(request)
    offsets: dict[str, int] = {}
    await _send_logs(m, resp, by_node, offsets, tail_n, details, timestamps, streams)
    if truthy(q.get("follow")):
        # Poll the agents for what was written since; ends when the client goes away.
        try:
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(LOG_FOLLOW_PERIOD)
                await _send_logs(m, resp, by_node, offsets, None, details, timestamps, streams)
        except ConnectionError:
            return resp
    await resp.write_eof()
    return resp


LOG_FOLLOW_PERIOD = 0.3


async def _send_logs(m: Manager, resp: web.StreamResponse, by_node: dict[str, list[Obj]],
                     offsets: dict[str, int], tail: int | None, details: bool,
                     timestamps: bool, streams: dict[int, bool]) -> None:
    for node_id, node_tasks in by_node.items():
        try:
            reply = await m.dispatcher.ask(node_id, {
                "op": "logs", "tail": tail, "tasks": [t["ID"] for t in node_tasks],
                "offsets": {t["ID"]: offsets.get(t["ID"], 0) for t in node_tasks}})
        except (ConnectionError, TimeoutError) as exc:
            log.info("logs from node %s: %s", node_id, exc)
            continue
        for task in node_tasks:
            part = reply.get(task["ID"]) or {"lines": [], "offset": 0}
            offsets[task["ID"]] = part["offset"]
            for ts, stream, line in part["lines"]:
                prefix = ""
                if timestamps:
                    prefix += ts + " "
                if details:
                    prefix += (f"com.docker.swarm.node.id={node_id},"
                               f"com.docker.swarm.service.id={task['ServiceID']},"
                               f"com.docker.swarm.task.id={task['ID']} ")
                stream_id = 1 if stream == "stdout" else 2
                if streams[stream_id]:
                    # One line per frame: the docker CLI parses each frame as one line.
                    await resp.write(_frame(stream_id, (prefix + line).encode()))


async def service_logs(request: web.Request) -> web.StreamResponse:
    m = mgr(request)
    svc = m.control.find("service", request.match_info["id"])
    tasks = sorted((t for t in m.store.list("task") if t["ServiceID"] == svc["ID"]),
                   key=lambda t: (t.get("Slot", 0), t["CreatedAt"]))
    return await _logs(request, tasks)


async def task_logs(request: web.Request) -> web.StreamResponse:
    return await _logs(request, [mgr(request).control.find("task", request.match_info["id"])])


def make_app(manager: Manager) -> web.Application:
    security = manager.security
    middlewares = [access_middleware(security.effective_role if security else None,
                                     manager.audit), errors]
    if security is not None:
        # Default deny: TLS callers need a certificate from this CA (docs/security.md).
        middlewares.insert(0, ca.auth_middleware(security.trust))
    app = web.Application(middlewares=middlewares, client_max_size=16 << 20)
    app[manager_key] = manager
    r = app.router
    r.add_route("HEAD", V + "_ping", ping)
    r.add_get(V + "_ping", ping, allow_head=False)
    r.add_get(V + "version", version)
    r.add_get(V + "info", info)
    r.add_get(V + "swarm", swarm_inspect)
    r.add_post(V + "swarm/update", swarm_update)
    r.add_get(V + "distribution/{name:.+}/json", distribution)
    r.add_get(V + "nodes", node_list)
    r.add_get(V + "nodes/{id}", node_inspect)
    r.add_post(V + "nodes/{id}/update", node_update)
    r.add_delete(V + "nodes/{id}", node_remove)
    r.add_get(V + "networks", network_list)
    r.add_post(V + "networks/create", network_create)
    r.add_get(V + "networks/{id}", network_inspect)
    r.add_delete(V + "networks/{id}", network_remove)
    r.add_get(V + "services", service_list)
    r.add_post(V + "services/create", service_create)
    r.add_get(V + "services/{id}", service_inspect)
    r.add_post(V + "services/{id}/update", service_update)
    r.add_delete(V + "services/{id}", service_remove)
    r.add_get(V + "services/{id}/logs", service_logs)
    r.add_get(V + "tasks", task_list)
    r.add_get(V + "tasks/{id}", task_inspect)
    r.add_get(V + "tasks/{id}/logs", task_logs)
    r.add_get("/shoal/v1/session", manager.dispatcher.handle)
    r.add_get(ca.CA_PATH, ca_cert)
    r.add_post(ca.JOIN_PATH, join)
    r.add_post(ca.RENEW_PATH, renew)
    r.add_post("/shoal/v1/users", user_create)
    r.add_get("/shoal/v1/users", user_list)
    r.add_delete("/shoal/v1/users/{id}", user_remove)
    r.add_get("/shoal/v1/audit", audit_read)
    return app

