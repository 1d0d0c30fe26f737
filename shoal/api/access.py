"""Who may call what (RBAC), and the audit of every change.

Authentication is shoal.ca's (`auth_middleware`: a verified certificate, or the unix socket);
this middleware runs after it and decides:

| caller                                        | acts as   |
| --------------------------------------------- | --------- |
| the unix socket (its file mode guards it)     | admin     |
| a user certificate, OU viewer/operator/admin  | that role |
| a manager node (its certificate and the store agree) | admin |
| a worker node                                 | its session and renewal only |

| route                                    | needs    |
| ---------------------------------------- | -------- |
| GET / HEAD of the Docker API             | viewer   |
| POST / DELETE of services and networks   | operator |
| everything else (nodes, swarm, users, audit) | admin |
| /shoal/v1/ca, /shoal/v1/join             | anyone (the join checks its token) |
| /shoal/v1/session, /shoal/v1/renew       | a node (the handler checks) |

A refusal is 403 with a message naming the caller, the call and the role it needs. Every
request that is not a read is audited with its outcome, refused ones included.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from shoal import ca
from shoal.ca.errors import CAError

log = logging.getLogger("shoal.api.access")

VIEWER, OPERATOR, ADMIN = ca.VIEWER, ca.OPERATOR, ca.ADMIN
LEVEL = {VIEWER: 0, OPERATOR: 1, ADMIN: 2}
OPEN_PATHS = frozenset({ca.CA_PATH, ca.JOIN_PATH})
NODE_PATHS = frozenset({"/shoal/v1/session", ca.RENEW_PATH})
OPERATOR_OBJECTS = ("services", "networks")
READS = ("GET", "HEAD")


@dataclass(frozen=True)
class Caller:
    name: str  # "alice", "node 4kx2… (swarm-manager)", "local uid 0", "anonymous"
    role: str  # viewer / operator / admin, "worker" or "anonymous"

    @property
    def level(self) -> int:
        return LEVEL.get(self.role, -1)

    @property
    def is_admin(self) -> bool:
        return self.level >= LEVEL[ADMIN]


CALLER = web.RequestKey("shoal_caller", Caller)


def _peer_uid(request: web.Request) -> str:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return f"local uid {struct.unpack('3i', creds)[1]}"
    except (AttributeError, OSError):
        return "local"


def caller_of(request: web.Request, effective_role: Callable[[ca.Identity], str] | None,
              ) -> Caller:
    """The caller behind an authenticated request (auth_middleware ran before)."""
    if effective_role is None or request.get(ca.LOCAL):
        # No CA (a manager built without one, as unit tests do): only local callers exist.
        return Caller(_peer_uid(request), ADMIN)
    ident: ca.Identity | None = request.get(ca.IDENTITY)
    if ident is None:
        return Caller("anonymous", "anonymous")
    if ident.is_user:
        return Caller(ident.name, ident.role)
    role = effective_role(ident)
    return Caller(str(ident), ADMIN if role == "manager" else "worker")


def required_role(method: str, route: str) -> str | None:
    """The role a Docker API call needs; None for shoal's own paths, which check themselves.
    `route` is the matched route without its version prefix ("services/{id}/update")."""
    if route.startswith("/shoal/"):
        return ADMIN if route not in OPEN_PATHS | NODE_PATHS else None
    if method in READS:
        return VIEWER
    if route.split("/", 1)[0] in OPERATOR_OBJECTS:
        return OPERATOR
    return ADMIN


def _route(request: web.Request) -> str | None:
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    if resource is None:
        return None
    return resource.canonical.removeprefix("/{_v}")


async def _target(request: web.Request, response: web.StreamResponse) -> str:
    """What a change is about: the object in the path, the name in the body, or the id the
    answer gives (a join's new node)."""
    if "id" in request.match_info:
        return request.match_info["id"]
    for raw in (await request.read() if request.body_exists else b"",
                response.body if isinstance(response, web.Response) else b""):
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError, TypeError):
            continue
        if isinstance(body, dict):
            name = body.get("Name") or body.get("name") or body.get("ID") or body.get("Id") \
                or body.get("node_id")
            if name:
                return str(name)
    return ""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def access_middleware(effective_role: Callable[[ca.Identity], str] | None, audit: object | None,
                      ) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """RBAC and audit. `effective_role` maps a node identity to "manager"/"worker" (None: no
    CA, every caller is local); `audit` has record(...) (None: no audit log)."""

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = _route(request)
        try:
            caller = caller_of(request, effective_role)
        except CAError as exc:  # a node removed between handshake and request
            log.warning("refused %s %s from %s: %s", request.method, request.path,
                        request.remote, exc)
            return ca.json_error(exc.status, str(exc))
        request[CALLER] = caller
        changes = request.method not in READS
        needed = required_role(request.method, route) if route is not None else None
        if needed is not None and caller.level < LEVEL[needed]:
            message = (f"{caller.name} ({caller.role}) may not {request.method} "
                       f"{request.path}: that needs role {needed}"
                       + ("" if needed == ADMIN else " or higher"))
            log.warning("denied: %s", message)
            response: web.StreamResponse = ca.json_error(403, message)
        else:
            response = await handler(request)
        if changes and audit is not None and route is not None:
            message = ""
            if response.status >= 400 and isinstance(response, web.Response) and response.body:
                try:
                    message = json.loads(response.body).get("message", "")
                except (ValueError, TypeError, AttributeError):
                    message = ""
            audit.record(caller.name, caller.role, str(request.remote or "local"),
                         request.method, request.path, response.status, message,
                         await _target(request, response))
        return response

    return access
