"""The node's WireGuard interface for encrypted overlays: one wireguard-go per node.

The agent owns it (see docs/encryption.md):

- Key: a Curve25519 private key made once and kept in <state dir>/wireguard.key (0600); the
  public key goes to the manager in the register message and comes back to the other nodes in
  their views' peer entries.
- Process: `wireguard-go -f <ifname>`, a child of the agent in the node's namespace, which
  kills it on exit (and the kernel does, via PR_SET_PDEATHSIG, if the agent dies first). If it
  exits on its own the node stops being ready, the manager is told, and it is started again.
- Configuration: spoken over its UAPI socket (wg_uapi.py), never by forking `wg`; each sync
  reads the device back (`get=1`) and writes only the difference (`set=1`).
- Peers: the other nodes that share an encrypted network with this node, each with its
  underlay address and WireGuard port as endpoint and its tunnel address (/32) as allowed IP,
  and the cluster's current preshared key (rotated by the manager). The interface holds this
  node's tunnel address in names.TUNNEL_NET, so the VXLAN devices of encrypted networks, whose
  local and remote addresses are tunnel addresses, route through it.

Fail closed: when wireguard-go is missing, /dev/net/tun is missing or the start fails, `ready`
is False and `error` says why; the dataplane then builds no encrypted network here, the agent
refuses tasks on one, and the manager's scheduler places none here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shoal.dataplane import names, wg_uapi
from shoal.errors import KernelError
from shoal.model.view import NodeView, encrypted_peers

log = logging.getLogger("shoal.wireguard")

SOCKET_DIR = Path("/var/run/wireguard")  # wireguard-go's, fixed at build time
TUN = Path("/dev/net/tun")
KEY_FILE = "wireguard.key"
MTU = 1500 - names.WIREGUARD_OVERHEAD  # the interface; VXLAN inside it takes 50 more
START_TIMEOUT = 5.0
UAPI_TIMEOUT = 2.0
RESTART_MIN, RESTART_MAX = 1.0, 30.0
PR_SET_PDEATHSIG = 1


def load_or_make_key(path: Path) -> X25519PrivateKey:
    """The node's private key: read from `path`, or made and written there (0600) once."""
    if path.exists():
        raw = path.read_bytes().strip()
        try:
            return X25519PrivateKey.from_private_bytes(bytes.fromhex(raw.decode()))
        except ValueError as exc:
            raise KernelError(f"{path} holds no WireGuard private key: remove it to make a "
                              "new one (the node's peers learn the new public key)") from exc
    key = X25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(raw.hex() + "\n")
    tmp.replace(path)
    return key


def private_hex(key: X25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption()).hex()


def public_b64(key: X25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return wg_uapi.hex_to_b64(raw.hex())


def plan_peers(view: NodeView, node_id: str) -> dict[str, wg_uapi.Peer]:
    """Public key (hex) -> the peer, for every node this one shares an encrypted network with.
    A node without a key or tunnel address yet (it cannot encrypt) is left out: no traffic of
    an encrypted network is ever sent towards it."""
    psk_entry = view.get("keys", {}).get("psk")
    psk = wg_uapi.b64_to_hex(psk_entry["key"]) if psk_entry else ""
    out = {}
    for peer_id in sorted(encrypted_peers(view, node_id)):
        peer = view["peers"].get(peer_id)
        if peer is None or not peer.get("wg_key") or not peer.get("tunnel_addr"):
            continue
        key = wg_uapi.b64_to_hex(peer["wg_key"])
        out[key] = wg_uapi.Peer(public_key=key, endpoint=f"{peer['addr']}:{peer['wg_port']}",
                                allowed_ips=(f"{peer['tunnel_addr']}/32",), preshared_key=psk)
    return out


def _pdeathsig() -> None:
    # In the child before exec: wireguard-go dies with the agent, even when the agent is
    # SIGKILLed and cannot stop it.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stamp(seconds: float) -> str:
    if not seconds:
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")



def uapi_exchange(ifname: str, request: bytes) -> str:
    """One request on wireguard-go's UAPI socket for `ifname`, and its whole answer (which
    ends with an empty line)."""
    path = SOCKET_DIR / f"{ifname}.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(UAPI_TIMEOUT)
            sock.connect(str(path))
            sock.sendall(request)
            data = b""
            while not data.endswith(b"\n\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise KernelError(f"WireGuard control socket {path}: {exc.strerror or exc}") from exc
    return data.decode()


def cpu_mask(cpus: int) -> str:
    """Every CPU, in sysfs's bitmap format: 32-bit hex words, most significant first
    (2 CPUs: "3"; 40: "ff,ffffffff")."""
    mask, words = (1 << cpus) - 1, []
    while mask:
        words.append(mask & 0xFFFFFFFF)
        mask >>= 32
    words.reverse()
    return ",".join([f"{words[0]:x}"] + [f"{w:08x}" for w in words[1:]])


UDP_BUFFER = 4 << 20  # what later wireguard-go releases ask for themselves (7 MiB)
SYS_PIDFD_GETFD = 438  # x86_64 and the generic table alike
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33


def enlarge_udp_buffers(pid: int, port: int, size: int = UDP_BUFFER) -> None:
    """Give wireguard-go's UDP sockets `size` bytes of buffer each way.

    This wireguard-go (v0.0.20220316) leaves its sockets at net.core.rmem_default (208 KiB),
    which a single TCP stream overflows: a tenth of the packets dropped at the receiving
    socket (UdpRcvbufErrors), thousands of retransmits a second. Later releases set 7 MiB
    themselves. rmem_default cannot be raised inside a node's namespace, so the agent takes a
    copy of each socket with pidfd_getfd(2) and sets SO_RCVBUFFORCE/SO_SNDBUFFORCE on it (the
    copy and the original are one socket). Performance only: a failure is logged."""
    inodes: set[str] = set()
    for table in ("udp", "udp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    libc = ctypes.CDLL(None, use_errno=True)
    done = 0
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:
        log.warning("cannot size wireguard-go's socket buffers: %s", exc)
        return
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target[8:-1] not in inodes or not target.startswith("socket:["):
                    continue
                mine = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
                if mine < 0:
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
                sock = socket.socket(fileno=mine)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
                    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)
                    done += 1
                finally:
                    sock.close()  # our copy only
    except OSError as exc:
        log.warning("cannot size wireguard-go's socket buffers: %s", exc)
    finally:
        os.close(pidfd)
    if not done:
        log.warning("found no UDP socket of wireguard-go (pid %d) on port %d to size", pid,
                    port)


def spread_receive(ifname: str) -> None:
    """Receive Packet Steering over every CPU for the WireGuard interface.

    wireguard-go hands each decrypted packet to the kernel with a write() on the TUN, and that
    write runs the whole receive path (VXLAN decapsulation, bridge, veth, the task's TCP) in
    wireguard-go's one receiving thread: on the encrypted overlay that thread was the
    bottleneck (0.66x of raw wireguard-go). With RPS the write only queues the packet and
    another CPU runs the rest (0.93-0.96x, docs/benchmarks.md). RPS is set in sysfs only, and
    /sys shows the namespace of whoever mounted it (the lab's agents enter their node's
    network namespace alone), so a private mount namespace mounts a fresh sysfs first.
    Performance only: a failure is logged, never fatal."""
    path = f"/sys/class/net/{ifname}/queues/rx-0/rps_cpus"
    mask = cpu_mask(os.cpu_count() or 1)
    try:
        out = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t sysfs sysfs /sys && echo "$1" > "$2"', "rps", mask, path],
            capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot spread %s's receive work over the CPUs: %s", ifname, exc)
        return
    if out.returncode != 0:
        log.warning("cannot spread %s's receive work over the CPUs: %s", ifname,
                    out.stderr.strip())

class WireGuard:
    def __init__(self, state_dir: Path, port: int = names.WIREGUARD_PORT,
                 binary: str = "wireguard-go") -> None:
        self.state_dir = state_dir
        self.ifname = names.wireguard_ifname(str(state_dir.resolve()))
        self.port = port
        self.binary = binary
        self.ready = False
        self.error = "not started"
        self.on_change: Callable[[], None] = lambda: None  # readiness changed (the agent)
        self._key: X25519PrivateKey | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._peers: dict[str, wg_uapi.Peer] = {}  # last programmed
        self._tunnel: str | None = None
        self.generation = 0  # +1 at each successful start: the interface is a new one

    @property
    def socket_path(self) -> Path:
        return SOCKET_DIR / f"{self.ifname}.sock"

    @property
    def public_key(self) -> str:
        return public_b64(self._key) if self._key is not None else ""

    def report(self) -> dict[str, Any]:
        """What the manager keeps of this node's encryption (the register message)."""
        return {"ready": self.ready, "pubkey": self.public_key if self.ready else "",
                "port": self.port, "error": "" if self.ready else self.error,
                "interface": self.ifname}

    # --- the process ---

    async def start(self) -> bool:
        """Start and configure wireguard-go; False (with `error` set) if this node cannot."""
        self._stopping = False
        try:
            self._key = load_or_make_key(self.state_dir / KEY_FILE)
            await self._start_process()
            await asyncio.to_thread(self._configure_device)
        except KernelError as exc:
            self.ready, self.error = False, str(exc)
            log.error("encryption is not available on this node: %s", exc)
            await self._kill()
            return False
        self.ready, self.error = True, ""
        self._peers, self._tunnel = {}, None
        self.generation += 1
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.create_task(self._supervise())
        log.info("WireGuard interface %s up on port %d", self.ifname, self.port)
        return True

    async def _start_process(self) -> None:
        binary = shutil.which(self.binary)
        if binary is None:
            raise KernelError(f"wireguard-go not found ({self.binary!r}): install it "
                              "(apt-get install wireguard-go) or give `--wireguard-go PATH`")
        if not TUN.exists():
            raise KernelError(f"{TUN} is missing: wireguard-go needs the TUN device")
        SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        logfile = self.state_dir / "wireguard-go.log"
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
        with open(logfile, "ab") as out:
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    binary, "-f", self.ifname, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=out, env=env, preexec_fn=_pdeathsig)
            except OSError as exc:
                raise KernelError(f"cannot run {binary}: {exc.strerror or exc}") from exc
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.returncode is not None:
                tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
                raise KernelError(f"wireguard-go exited with code {self._proc.returncode} at "
                                  f"start: {' / '.join(tail) or 'no output'}")
            if self.socket_path.exists():
                with contextlib.suppress(KernelError):
                    await asyncio.to_thread(self._uapi, wg_uapi.render_get())
                    return
            if time.monotonic() > deadline:
                raise KernelError(f"wireguard-go did not open {self.socket_path} within "
                                  f"{START_TIMEOUT:g}s")
            await asyncio.sleep(0.02)

    def _configure_device(self) -> None:
        assert self._key is not None
        self._set(wg_uapi.render_set(None, wg_uapi.Device(private_hex(self._key), self.port)))
        with self._netlink() as ipr:
            index = self._index(ipr)
            ipr.link("set", index=index, mtu=MTU, state="up")
        spread_receive(self.ifname)
        if self._proc is not None:
            enlarge_udp_buffers(self._proc.pid, self.port)



    async def _supervise(self) -> None:
        delay = RESTART_MIN
        while not self._stopping:
            proc = self._proc
            if proc is not None:
                code = await proc.wait()
                if self._stopping:
                    return
                self.ready, self.error = False, f"wireguard-go exited with code {code}"
                log.error("%s; restarting it", self.error)
                self.on_change()
            await asyncio.sleep(delay)
            if self._stopping:
                return
            if await self._restart():
                delay = RESTART_MIN
                self.on_change()
            else:
                delay = min(RESTART_MAX, delay * 2)

    async def _restart(self) -> bool:
        try:
            await self._start_process()
            await asyncio.to_thread(self._configure_device)
        except KernelError as exc:
            self.error = str(exc)
            log.error("restarting wireguard-go: %s", exc)
            await self._kill()
            return False
        self.ready, self.error = True, ""
        self._peers, self._tunnel = {}, None
        self.generation += 1
        log.info("wireguard-go is back: %s up on port %d", self.ifname, self.port)
        return True

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 3.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        """Stop wireguard-go; its interface and socket go with it."""
        self._stopping = True
        self.ready, self.error = False, "stopped"
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._kill()

    # --- UAPI and netlink ---

    def _uapi(self, request: bytes) -> str:
        return uapi_exchange(self.ifname, request)

    def _set(self, text: str) -> None:
        if not text:
            return
        log.debug("%s: %s", self.ifname, text.replace("\n", " ").strip())
        errno = wg_uapi.parse_errno(self._uapi(text.encode()))
        if errno != 0:
            raise KernelError(f"wireguard-go refused the configuration of {self.ifname}: "
                              f"errno={errno}" + (" (port in use?)" if errno == 98 else ""))

    def device(self) -> wg_uapi.Device:
        return wg_uapi.parse_get(self._uapi(wg_uapi.render_get()))

    @contextlib.contextmanager
    def _netlink(self):  # type: ignore[no-untyped-def]
        try:
            with IPRoute() as ipr:
                yield ipr
        except (NetlinkError, OSError) as exc:
            raise KernelError(f"WireGuard interface {self.ifname}: {exc}") from exc

    def _index(self, ipr: IPRoute) -> int:
        found = ipr.link_lookup(ifname=self.ifname)
        if not found:
            raise KernelError(f"wireguard-go made no interface {self.ifname}")
        return int(found[0])

    def _sync_address(self, tunnel: str) -> None:
        prefixlen = ipaddress.IPv4Network(names.TUNNEL_NET).prefixlen
        with self._netlink() as ipr:
            index = self._index(ipr)
            have = {(m.get_attr("IFA_ADDRESS"), m["prefixlen"])
                    for m in ipr.get_addr(family=socket.AF_INET, index=index)}
            for ip, plen in have - {(tunnel, prefixlen)}:
                ipr.addr("del", index=index, address=ip, prefixlen=plen)
            if (tunnel, prefixlen) not in have:
                ipr.addr("add", index=index, address=tunnel, prefixlen=prefixlen)

    # --- desired state ---

    def sync(self, view: NodeView, node_id: str, force: bool = False) -> None:
        """Tunnel address and peers as the view says. Skipped when nothing changed unless
        `force` (which re-reads the device and repairs drift)."""
        if not self.ready:
            return
        tunnel = view["node"].get("tunnel_addr") or None
        want = plan_peers(view, node_id)
        if not force and tunnel == self._tunnel and want == self._peers:
            return
        if tunnel and (force or tunnel != self._tunnel):
            self._sync_address(tunnel)
        self._tunnel = tunnel
        have = self.device()
        assert self._key is not None
        self._set(wg_uapi.render_set(have, wg_uapi.Device(private_hex(self._key), self.port,
                                                         want)))
        self._peers = want

    def status(self, view: NodeView | None, node_id: str, network_id: str) -> dict[str, Any]:
        """What `network inspect` shows of this node for one encrypted network."""
        out: dict[str, Any] = {"Ready": self.ready, "Interface": self.ifname,
                               "Error": self.error if not self.ready else "", "Peers": []}
        if not self.ready or view is None:
            return out
        try:
            device = self.device()
        except KernelError as exc:
            out["Ready"], out["Error"] = False, str(exc)
            return out
        on_net = {ep["node_id"] for ep in view["endpoints"].values()
                  if network_id in ep["addrs"] and ep["node_id"] != node_id}
        for peer_id in sorted(on_net):
            peer = view["peers"].get(peer_id, {})
            key = wg_uapi.b64_to_hex(peer["wg_key"]) if peer.get("wg_key") else ""
            have = device.peers.get(key)
            out["Peers"].append({
                "Node": peer_id, "Name": peer.get("name", ""),
                "Endpoint": have.endpoint if have else "",
                "Configured": have is not None,
                "PresharedKey": bool(have and have.preshared_key),
                "LastHandshake": _stamp(have.last_handshake) if have else "",
                "RxBytes": have.rx_bytes if have else 0,
                "TxBytes": have.tx_bytes if have else 0})
        out["Up"] = all(p["Configured"] for p in out["Peers"])
        return out
