"""Routing tables: Host or SNI name -> backends, and the normalisation both sides agree on.

A table is immutable once built; the server swaps the whole table in one assignment, so a
request sees either the old or the new one, never half of each. Each `Route` keeps its own
round-robin position (the only mutable part), which a new table starts afresh.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.mesh.errors import InvalidRoutes

Addr = tuple[str, int]

# RFC 3986 reg-name characters that make sense in a DNS name, plus '*' for wildcard keys.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")
_MAX_NAME = 253


def normalize_name(name: str, wildcard: bool = False) -> str | None:
    """A host name as routes are keyed: lower case, one trailing dot dropped. None if invalid.

    `[v6]` literals keep their brackets; anything else must be letters, digits, '-', '.', '_',
    and with `wildcard` (route keys only) it may start with '*.'.
    """
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > _MAX_NAME:
        return None
    if name[0] == "[":
        if name[-1] != "]":
            return None
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            return None
        return name
    if wildcard and name.startswith("*."):
        return None if normalize_name(name[2:]) is None else name
    if not _NAME_CHARS.issuperset(name) or ".." in name or name[0] == ".":
        return None
    return name


_host_cache: dict[bytes, str | None] = {}


def normalize_host(raw: bytes) -> str | None:
    """The Host header's value (or an absolute URI's authority) as a route key, or None.

    Case-insensitive, port stripped, trailing dot ignored (RFC 9110 section 7.2). Results are
    cached: a node sees few distinct Host values, and this runs once per request.
    """
    try:
        return _host_cache[raw]
    except KeyError:
        pass
    value = _normalize_host(raw)
    if len(_host_cache) >= 4096:
        _host_cache.clear()
    _host_cache[raw] = value
    return value


def _normalize_host(raw: bytes) -> str | None:
    try:
        text = raw.strip(b" \t").decode("ascii")
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        host, rest = text[: close + 1], text[close + 1 :]
    else:
        host, colon, port = text.partition(":")
        rest = colon + port
    if rest:  # ":port", where the port may be empty (RFC 3986 section 3.2.3)
        port = rest[1:]
        if rest[0] != ":" or (port and (not port.isdigit() or len(port) > 5)):
            return None
    return normalize_name(host)


def parse_addr(text: str) -> Addr:
    """'10.255.0.5:80' or '[fd00::5]:80' -> (ip, port). Only IP literals: the mesh never
    resolves names on the request path."""
    if not isinstance(text, str):
        raise InvalidRoutes(f"backend {text!r}: expected 'ip:port'")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InvalidRoutes(f"backend {text!r}: an IPv6 address goes in brackets: '[addr]:port'")
    try:
        ip = ipaddress.ip_address(host)
        number = int(port) if sep and port.isdigit() else -1
    except ValueError:
        raise InvalidRoutes(f"backend {text!r}: expected 'ip:port'") from None
    if not 0 < number < 65536:
        raise InvalidRoutes(f"backend {text!r}: port must be 1-65535")
    return (str(ip), number)


def format_addr(addr: Addr) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Route:
    """The backends of one name, taken in round-robin order."""

    __slots__ = ("backends", "_next")

    def __init__(self, backends: tuple[Addr, ...]) -> None:
        self.backends = backends
        self._next = 0

    def pick(self) -> int:
        """The index of the backend to try first; the others follow it in order."""
        i = self._next
        self._next = i + 1 if i + 1 < len(self.backends) else 0
        return i

    def order(self, first: int) -> list[Addr]:
        return list(self.backends[first:] + self.backends[:first])

    def __repr__(self) -> str:
        return f"Route({[format_addr(a) for a in self.backends]})"


@dataclass(frozen=True)
class RouteTable:
    """`http` routes by Host header, `https` by TLS SNI. Keys are normalised names; a key
    '*.example.org' matches any name with exactly one more label in front."""

    http: Mapping[str, Route] = field(default_factory=dict)
    https: Mapping[str, Route] = field(default_factory=dict)

    def addrs(self) -> set[Addr]:
        return {a for table in (self.http, self.https) for r in table.values() for a in r.backends}

    def to_json(self) -> dict[str, dict[str, list[str]]]:
        return {kind: {name: [format_addr(a) for a in r.backends] for name, r in table.items()}
                for kind, table in (("http", self.http), ("https", self.https))}


def lookup(table: Mapping[str, Route], name: str) -> Route | None:
    route = table.get(name)
    if route is None:
        _, dot, parent = name.partition(".")
        if dot:
            route = table.get("*." + parent)
    return route


def _parse_kind(kind: str, value: Any) -> dict[str, Route]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRoutes(f"{kind}: expected an object of name -> ['ip:port', ...]")
    routes: dict[str, Route] = {}
    for name, backends in value.items():
        key = normalize_name(name, wildcard=True) if isinstance(name, str) else None
        if key is None:
            raise InvalidRoutes(f"{kind}: {name!r} is not a host name")
        if key in routes:
            raise InvalidRoutes(f"{kind}: {name!r} is given twice")
        if not isinstance(backends, list | tuple):
            raise InvalidRoutes(f"{kind} {name!r}: expected a list of 'ip:port'")
        addrs = tuple(dict.fromkeys(parse_addr(b) for b in backends))
        if addrs:  # a name with no backend is the same as no route: 503 / TLS alert
            routes[key] = Route(addrs)
    return routes


def parse_routes(doc: Any) -> RouteTable:
    """{"http": {name: ["ip:port", ...]}, "https": {...}} -> RouteTable, or InvalidRoutes."""
    if not isinstance(doc, Mapping):
        raise InvalidRoutes("routes: expected an object with 'http' and/or 'https'")
    unknown = set(doc) - {"http", "https", "id"}
    if unknown:
        raise InvalidRoutes(f"routes: unknown key(s) {sorted(unknown)}")
    return RouteTable(_parse_kind("http", doc.get("http")), _parse_kind("https", doc.get("https")))


LABEL_HTTP_HOST = "shoal.http.host"
LABEL_HTTP_PORT = "shoal.http.port"
LABEL_HTTPS_HOST = "shoal.https.host"
LABEL_HTTPS_PORT = "shoal.https.port"


@dataclass(frozen=True)
class ServiceRoutes:
    """What the agent knows of one service: its labels and its healthy tasks' addresses on
    the network the mesh reaches them by (the ingress network)."""

    name: str
    labels: Mapping[str, str]
    addresses: tuple[str, ...]


def routes_from_services(services: Iterable[ServiceRoutes]) -> tuple[dict[str, Any], list[str]]:
    """Build the JSON table the mesh process takes, from service labels (see docs/mesh.md).

    Returns (table, problems). A name claimed by two services goes to the first one given
    (the caller sorts, e.g. by creation); a bad label skips that service. Both are reported
    in `problems` rather than raised, so one bad service never takes the others' routes down.
    """
    table: dict[str, dict[str, list[str]]] = {"http": {}, "https": {}}
    owner: dict[tuple[str, str], str] = {}
    problems: list[str] = []
    for svc in services:
        http_hosts = _label_names(svc.labels.get(LABEL_HTTP_HOST, ""))
        https_hosts = _label_names(svc.labels.get(LABEL_HTTPS_HOST, "")) or http_hosts
        for kind, hosts, port_label, default in (
                ("http", http_hosts, LABEL_HTTP_PORT, "80"),
                ("https", https_hosts, LABEL_HTTPS_PORT, None)):
            if kind == "https" and LABEL_HTTPS_HOST in svc.labels:
                default = "443"
            port_text = svc.labels.get(port_label, default)
            if not hosts or port_text is None:
                continue
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                problems.append(f"service {svc.name}: {port_label}={port_text!r} is not a port")
                continue
            if any(normalize_name(h, wildcard=True) is None for h in hosts):
                problems.append(f"service {svc.name}: bad host name in {hosts!r}")
                continue
            backends = [format_addr((ip, int(port_text))) for ip in svc.addresses]
            for host in hosts:
                key = normalize_name(host, wildcard=True) or host
                taken = owner.setdefault((kind, key), svc.name)
                if taken != svc.name:
                    problems.append(f"{kind} host {key} claimed by {taken} and {svc.name}")
                    continue
                table[kind][key] = backends
    return table, problems


def _label_names(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]
