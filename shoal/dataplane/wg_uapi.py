"""WireGuard's cross-platform userspace API (UAPI), as wireguard-go serves it on
/var/run/wireguard/<ifname>.sock: pure rendering and parsing, no I/O.

The protocol (https://www.wireguard.com/xplatform/): a request is `get=1` or `set=1`, then
`key=value` lines, then an empty line; keys are hex. A `get` answers the device's lines, then
one `public_key=` line per peer followed by that peer's lines, then `errno=0` and an empty
line. A `set` answers `errno=N`. In a `set`, the lines after a `public_key=` apply to that peer.

`render_set(have, want)` writes only what differs, and never `replace_peers`: re-adding a peer
would throw its session away, and a preshared key set on a live peer must only take effect at
its next handshake (that is what lets a key rotation lose no traffic).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from shoal.errors import KernelError

ZERO_KEY = "0" * 64


def b64_to_hex(key: str) -> str:
    """wg's base64 key -> UAPI hex. Raises KernelError if it is not a 32-byte key."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KernelError(f"not a WireGuard key: {key!r}") from exc
    if len(raw) != 32:
        raise KernelError(f"not a WireGuard key (32 bytes): {key!r}")
    return raw.hex()


def hex_to_b64(key: str) -> str:
    return base64.b64encode(bytes.fromhex(key)).decode()


@dataclass(frozen=True)
class Peer:
    """What shoal configures on a peer, and what a `get` also tells of it."""

    public_key: str  # hex
    endpoint: str = ""  # "198.18.0.12:51820"
    allowed_ips: tuple[str, ...] = ()  # sorted, "100.64.0.2/32"
    preshared_key: str = ""  # hex, "" for none
    # Observed only (from a get): not compared, never set.
    last_handshake: float = field(default=0.0, compare=False)  # seconds since the epoch, 0: never
    rx_bytes: int = field(default=0, compare=False)
    tx_bytes: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Device:
    private_key: str = ""  # hex
    listen_port: int = 0
    peers: dict[str, Peer] = field(default_factory=dict)  # public key (hex) -> peer


def render_get() -> bytes:
    return b"get=1\n\n"


def _peer_lines(peer: Peer) -> list[str]:
    lines = [f"public_key={peer.public_key}",
             f"preshared_key={peer.preshared_key or ZERO_KEY}"]
    if peer.endpoint:
        lines.append(f"endpoint={peer.endpoint}")
    lines.append("replace_allowed_ips=true")
    lines += [f"allowed_ip={ip}" for ip in peer.allowed_ips]
    return lines


def render_set(have: Device | None, want: Device) -> str:
    """The `set=1` request that turns `have` into `want`, or "" when they already agree.
    With `have` None everything in `want` is written (peers are still never replaced)."""
    lines: list[str] = []
    if have is None or have.private_key != want.private_key:
        lines.append(f"private_key={want.private_key}")
    if have is None or have.listen_port != want.listen_port:
        lines.append(f"listen_port={want.listen_port}")
    current = have.peers if have is not None else {}
    for key in sorted(current):
        if key not in want.peers:
            lines += [f"public_key={key}", "remove=true"]
    for key in sorted(want.peers):
        peer = want.peers[key]
        if current.get(key) != peer:
            lines += _peer_lines(peer)
    if not lines:
        return ""
    return "set=1\n" + "\n".join(lines) + "\n\n"


def parse_errno(reply: str) -> int:
    """The errno= of an answer; -1 if it carries none (a cut-off answer)."""
    for line in reply.splitlines():
        if line.startswith("errno="):
            try:
                return int(line[6:])
            except ValueError:
                return -1
    return -1


def parse_get(reply: str) -> Device:
    """A `get=1` answer -> Device. Raises KernelError on a non-zero errno."""
    errno = parse_errno(reply)
    if errno != 0:
        raise KernelError(f"wireguard-go refused get: errno={errno}")
    device: dict[str, object] = {"private_key": "", "listen_port": 0}
    peers: dict[str, dict[str, object]] = {}
    peer: dict[str, object] | None = None
    for line in reply.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "public_key":
            peer = peers.setdefault(value, {"public_key": value, "allowed_ips": [], "sec": 0,
                                             "nsec": 0})
        elif peer is None:
            if key == "private_key":
                device["private_key"] = value
            elif key == "listen_port":
                device["listen_port"] = int(value)
        elif key == "endpoint":
            peer["endpoint"] = value
        elif key == "allowed_ip":
            peer["allowed_ips"].append(value)  # type: ignore[union-attr]
        elif key == "preshared_key":
            peer["preshared_key"] = "" if value == ZERO_KEY else value
        elif key == "last_handshake_time_sec":
            peer["sec"] = int(value)
        elif key == "last_handshake_time_nsec":
            peer["nsec"] = int(value)
        elif key in ("rx_bytes", "tx_bytes"):
            peer[key] = int(value)
    out = {}
    for key, p in peers.items():
        out[key] = Peer(
            public_key=key, endpoint=str(p.get("endpoint", "")),
            allowed_ips=tuple(sorted(p["allowed_ips"])),  # type: ignore[call-overload]
            preshared_key=str(p.get("preshared_key", "")),
            last_handshake=int(p["sec"]) + int(p["nsec"]) / 1e9,  # type: ignore[call-overload]
            rx_bytes=int(p.get("rx_bytes", 0)),  # type: ignore[call-overload]
            tx_bytes=int(p.get("tx_bytes", 0)))  # type: ignore[call-overload]
    return Device(private_key=str(device["private_key"]),
                  listen_port=int(device["listen_port"]),  # type: ignore[call-overload]
                  peers=out)
