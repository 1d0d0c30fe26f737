"""The allocator: subnets and VNIs for networks, VIPs for services, addresses for tasks.

Pools live in memory, rebuilt from the store when the manager starts. Every address has an
owner (a service or task id) so a late release from an old owner never frees an address that
was given again since. Addresses are handed out round-robin from a cursor, not lowest-free, so a
just-freed address is not reused at once while some peer may still hold it in a cache.
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

from shoal.errors import Conflict, InvalidArgument, NotFound, ShoalError
from shoal.model.objects import TERMINAL, Obj, now, parse_subnet
from shoal.store.base import Event, MemoryState

VNI_KEY = "com.docker.network.driver.overlay.vxlanid_list"
FIRST_VNI = 4096
DEFAULT_POOL = ipaddress.ip_network("10.0.0.0/8")
INGRESS_POOL = ipaddress.ip_network("10.255.0.0/16")  # kept for the ingress network
SUBNET_SIZE = 24
PORT_RANGE = range(30000, 32768)  # Docker's range for `--publish TARGET` with no published port
INGRESS_NAME = "ingress"
# The HTTP routing mesh listens on these on every node (agent --mesh-http-port/--mesh-https-port
# change them there; keep the two in step): no service may publish them.
MESH_PORTS = {("tcp", 80): "the HTTP routing mesh", ("tcp", 443): "the HTTPS routing mesh"}


class AddressPool:
    def __init__(self, subnet: ipaddress.IPv4Network, gateway: str) -> None:
        self.subnet = subnet
        self.gateway = gateway
        self.owners: dict[int, str] = {int(ipaddress.ip_address(gateway)): "gateway"}
        self.first = int(subnet.network_address) + 1
        self.last = int(subnet.broadcast_address) - 1
        self.cursor = self.first

    def claim(self, ip: str, owner: str) -> None:
        self.owners[int(ipaddress.ip_address(ip))] = owner

    def allocate(self, owner: str) -> str:
        size = self.last - self.first + 1
        for step in range(size):
            candidate = self.first + (self.cursor - self.first + step) % size
            if candidate not in self.owners:
                self.owners[candidate] = owner
                self.cursor = candidate + 1 if candidate < self.last else self.first
                return str(ipaddress.ip_address(candidate))
        raise ShoalError(f"no address left in {self.subnet}")

    def release(self, ip: str, owner: str) -> None:
        key = int(ipaddress.ip_address(ip))
        if self.owners.get(key) == owner:
            del self.owners[key]


def network_subnet(net: Obj) -> tuple[str, str]:
    config = net["IPAMOptions"]["Configs"][0]
    return config["Subnet"], config["Gateway"]


def network_vni(net: Obj) -> int:
    return int(net["DriverState"]["Options"][VNI_KEY])


class Allocator:
    def __init__(self, state: MemoryState) -> None:
        self.pools: dict[str, AddressPool] = {}
        for net in state.peek("network"):
            subnet, gateway = network_subnet(net)
            self.pools[net["ID"]] = AddressPool(parse_subnet(subnet), gateway)
        for svc in state.peek("service"):
            for vip in svc.get("Endpoint", {}).get("VirtualIPs", []):
                self._claim(vip["NetworkID"], vip["Addr"], svc["ID"])
        self.ports: dict[tuple[str, int], str] = {}  # (protocol, published port) -> service id
        for svc in state.peek("service"):
            for port in svc.get("Endpoint", {}).get("Ports", []):
                if port["PublishMode"] == "ingress":
                    self.ports[(port["Protocol"], port["PublishedPort"])] = svc["ID"]
        for node in state.peek("node"):
            for att in node.get("Attachments", []):
                for addr in att["Addresses"]:
                    self._claim(att["Network"]["ID"], addr, node["ID"])
        for task in state.peek("task"):
            if task["Status"]["State"] not in TERMINAL:
                for att in task.get("NetworksAttachments", []):
                    for addr in att["Addresses"]:
                        self._claim(att["Network"]["ID"], addr, task["ID"])

    def _claim(self, network_id: str, addr: str, owner: str) -> None:
        pool = self.pools.get(network_id)
        if pool is not None:
            pool.claim(addr.split("/")[0], owner)

    # --- networks ---

    def network_config(self, existing: list[Obj], ipam: dict[str, Any]) -> tuple[str, str, int]:
        """Subnet, gateway and VNI for a new network; refuses overlaps with existing ones."""
        taken = [ipaddress.ip_network(network_subnet(n)[0]) for n in existing]
        configs = ipam.get("Config") or []
        if len(configs) > 1:
            raise InvalidArgument("an overlay network takes one IPv4 subnet")
        config = configs[0] if configs else {}
        if config.get("Subnet"):
            subnet = parse_subnet(config["Subnet"])
            for other in taken:
                if subnet.overlaps(other):
                    raise Conflict(
                        f"subnet {subnet} overlaps the subnet {other} of another network")
        else:
            subnet = self._free_subnet(taken)
        gateway = config.get("Gateway") or str(subnet.network_address + 1)
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError as exc:
            raise InvalidArgument(f"invalid gateway {gateway!r}") from exc
        if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
            raise InvalidArgument(f"gateway {gateway} is not a host address of {subnet}")
        used_vnis = {network_vni(n) for n in existing}
        vni = next(v for v in range(FIRST_VNI, 1 << 24) if v not in used_vnis)
        return str(subnet), gateway, vni

    @staticmethod
    def _free_subnet(taken: list[Any]) -> ipaddress.IPv4Network:
        for candidate in DEFAULT_POOL.subnets(new_prefix=SUBNET_SIZE):
            if candidate.overlaps(INGRESS_POOL) or candidate.network_address == DEFAULT_POOL[0]:
                continue
            if not any(candidate.overlaps(t) for t in taken):
                return candidate  # type: ignore[return-value]
        raise ShoalError("the address pool 10.0.0.0/8 is exhausted")

    def add_network(self, net: Obj) -> None:
        subnet, gateway = network_subnet(net)
        self.pools[net["ID"]] = AddressPool(parse_subnet(subnet), gateway)

    # --- services and tasks ---

    def allocate(self, network_id: str, owner: str) -> str:
        """An address "ip/prefix" on the network for owner."""
        pool = self.pools.get(network_id)
        if pool is None:
            raise NotFound(f"network {network_id} not found")
        return f"{pool.allocate(owner)}/{pool.subnet.prefixlen}"

    def release(self, network_id: str, addr: str, owner: str) -> None:
        pool = self.pools.get(network_id)
        if pool is not None:
            pool.release(addr.split("/")[0], owner)

    def release_service(self, svc: Obj) -> None:
        for vip in svc.get("Endpoint", {}).get("VirtualIPs", []):
            self.release(vip["NetworkID"], vip["Addr"], svc["ID"])
        self.release_ports(svc["ID"], [])

    # --- published ports (ingress mode: one service per protocol and port, cluster-wide) ---

    def publish(self, service_id: str, wanted: list[Obj], old: list[Obj]) -> list[Obj]:
        """Endpoint.Ports for wanted: ingress ports claimed, port 0 given one from 30000-32767
        (the one it had before, across an update). Refuses a port another service holds."""
        before = {(p["Protocol"], p["TargetPort"]): p["PublishedPort"] for p in old
                  if p["PublishMode"] == "ingress"}
        out, claimed = [], []
        try:
            for port in wanted:
                port = dict(port)
                if port["PublishMode"] == "ingress":
                    proto = port["Protocol"]
                    number = port["PublishedPort"] or before.get((proto, port["TargetPort"]))
                    if not number:
                        number = next((n for n in PORT_RANGE if (proto, n) not in self.ports),
                                      None)
                        if number is None:
                            raise ShoalError(f"no free {proto} port left in 30000-32767")
                    if (proto, number) in MESH_PORTS:
                        raise Conflict(f"port {number}/{proto} is taken by "
                                       f"{MESH_PORTS[(proto, number)]} on every node")
                    owner = self.ports.get((proto, number))
                    if owner is not None and owner != service_id:
                        raise Conflict(f"port {number}/{proto} is already published by "
                                       f"service {owner}")
                    if owner is None:
                        self.ports[(proto, number)] = service_id
                        claimed.append((proto, number))
                    port["PublishedPort"] = number
                out.append(port)
        except Exception:
            for key in claimed:
                self.ports.pop(key, None)
            raise
        return out

    def release_ports(self, service_id: str, keep: list[Obj]) -> None:
        """Free the service's ingress ports that are not in keep."""
        kept = {(p["Protocol"], p["PublishedPort"]) for p in keep
                if p["PublishMode"] == "ingress"}
        for key, owner in list(self.ports.items()):
            if owner == service_id and key not in kept:
                del self.ports[key]

    def release_task(self, task: Obj) -> None:
        for att in task.get("NetworksAttachments", []):
            for addr in att["Addresses"]:
                self.release(att["Network"]["ID"], addr, task["ID"])

    def observe(self, events: list[Event]) -> None:
        """Free what committed changes let go: dead tasks, removed services and networks."""
        for ev in events:
            if ev.kind == "task" and (ev.action == "delete"
                                      or ev.obj["Status"]["State"] in TERMINAL):
                self.release_task(ev.obj)
            elif ev.kind == "service" and ev.action == "delete":
                self.release_service(ev.obj)
            elif ev.kind == "network" and ev.action == "delete":
                self.pools.pop(ev.obj["ID"], None)

    # --- the controller half: give new tasks their addresses ---

    def tick(self, store: Any) -> None:
        """Move tasks from new to pending, each with an address on each of its networks."""
        self._attach_nodes(store)
        fresh = [t for t in store.peek("task") if t["Status"]["State"] == "new"]
        if not fresh:
            return
        with store.tx() as tx:
            for task in fresh:
                task = copy.deepcopy(task)
                if task["DesiredState"] != "running":
                    task["Status"] = status("rejected", "removed before it was allocated")
                    tx.update("task", task)
                    continue
                try:
                    task["NetworksAttachments"] = self._attachments(store, task)
                except ShoalError as exc:
                    self.release_task(task)
                    task["Status"] = status("rejected", "allocation failed", str(exc))
                else:
                    task["Status"] = status("pending", "pending task scheduling")
                tx.update("task", task)

    def _attach_nodes(self, store: Any) -> None:
        """Every node is on the ingress network (it answers published ports): an address each."""
        ingress = ingress_network(store)
        if ingress is None:
            return
        bare = [n for n in store.peek("node")
                if not any(a["Network"]["ID"] == ingress["ID"] for a in n.get("Attachments", []))]
        if not bare:
            return
        with store.tx() as tx:
            for node in bare:
                node = copy.deepcopy(node)
                node["Attachments"] = [*node.get("Attachments", []), {
                    "Network": {"ID": ingress["ID"]},
                    "Addresses": [self.allocate(ingress["ID"], node["ID"])]}]
                tx.update("node", node)

    def _attachments(self, store: Any, task: Obj) -> list[Obj]:
        attachments = []
        targets = list(task["Spec"].get("Networks", []))
        svc = store.get("service", task["ServiceID"])
        ingress = ingress_network(store)
        if svc is not None and ingress is not None and publishes(svc):
            targets.append({"Target": ingress["ID"]})
        for target in targets:
            net = store.get("network", target["Target"])
            if net is None:
                raise NotFound(f"network {target['Target']} not found")
            addr = self.allocate(net["ID"], task["ID"])
            # Slim copy of the network as Docker embeds it in a task.
            attachments.append({"Network": {k: net[k] for k in (
                "ID", "Version", "CreatedAt", "UpdatedAt", "Spec", "DriverState", "IPAMOptions")},
                "Addresses": [addr]})
            task["NetworksAttachments"] = attachments  # so release_task sees partial work
        return attachments


def ingress_network(store: Any) -> Obj | None:
    return next((n for n in store.peek("network") if n["Spec"].get("Ingress")), None)


MESH_LABELS = ("shoal.http.host", "shoal.https.host")


def publishes(svc: Obj) -> bool:
    """Its tasks join the ingress network: nodes reach them there for every published port
    (in host mode too: the node forwards from its own address to its own task), and for the
    HTTP routing mesh when a label routes a host name to it."""
    labels = svc["Spec"].get("Labels") or {}
    return bool(svc.get("Endpoint", {}).get("Ports")) or any(k in labels for k in MESH_LABELS)


def status(state: str, message: str, err: str | None = None) -> Obj:
    out: Obj = {"Timestamp": now(), "State": state, "Message": message}
    if err:
        out["Err"] = err
    return out
