"""The control API: what a user's request does to the store (swarmkit's controlapi).

Each operation validates first, allocates second and writes one transaction last, so a refused
request leaves nothing behind: an allocation made before a failing write is given back.
"""

from __future__ import annotations

import copy
from typing import Any

from shoal.errors import Conflict, InvalidArgument, NotFound
from shoal.manager.allocator import (
    INGRESS_NAME,
    INGRESS_POOL,
    VNI_KEY,
    Allocator,
    ingress_network,
)
from shoal.model import spec as specs
from shoal.model.objects import TERMINAL, Obj, new_id, now
from shoal.store.base import BaseStore


class Control:
    def __init__(self, store: BaseStore, allocator: Allocator) -> None:
        self.store = store
        self.allocator = allocator

    # --- lookups: an id, a unique id prefix, or a name, as Docker accepts them ---

    def find(self, kind: str, ref: str) -> Obj:
        obj = self.store.get(kind, ref)
        if obj is not None:
            return obj
        if kind in ("service", "network"):
            obj = self.store.by_name(kind, ref)
            if obj is not None:
                return obj
        if kind == "node":
            for node in self.store.peek("node"):
                if node["Description"]["Hostname"] == ref:
                    return copy.deepcopy(node)
        matches = [o for o in self.store.peek(kind) if o["ID"].startswith(ref)] if ref else []
        if len(matches) == 1:
            return copy.deepcopy(matches[0])
        if len(matches) > 1:
            raise InvalidArgument(f"{kind} {ref!r} is ambiguous: {len(matches)} match")
        raise NotFound(f"{kind} {ref} not found")

    # --- networks ---

    def create_network(self, body: Any) -> Obj:
        spec = specs.network_request(body)
        return self._create_network(spec)

    def ensure_ingress(self) -> None:
        """The ingress network, made once per cluster as `docker swarm init` does."""
        if ingress_network(self.store) is None and self.store.by_name("network",
                                                                      INGRESS_NAME) is None:
            self._create_network({
                "Name": INGRESS_NAME, "Labels": {}, "DriverConfiguration": {"Name": "overlay",
                                                                           "Options": {}},
                "Internal": False, "Attachable": False, "Ingress": True,
                "IPAM": {"Config": [{"Subnet": str(INGRESS_POOL)}]}})

    def _create_network(self, spec: Obj) -> Obj:
        if self.store.by_name("network", spec["Name"]) is not None:
            raise Conflict(f"network with name {spec['Name']} already exists")
        subnet, gateway, vni = self.allocator.network_config(
            self.store.list("network"), spec.pop("IPAM"))
        ipam = {"Driver": {"Name": "default"}, "Configs": [{"Subnet": subnet, "Gateway": gateway}]}
        spec["IPAMOptions"] = copy.deepcopy(ipam)
        spec["Scope"] = "swarm"
        ts = now()
        net = {"ID": new_id(), "Version": {"Index": 0}, "CreatedAt": ts, "UpdatedAt": ts,
               "Spec": spec, "DriverState": {"Name": "overlay", "Options": {VNI_KEY: str(vni)}},
               "IPAMOptions": ipam}
        with self.store.tx() as tx:
            tx.create("network", net)
        self.allocator.add_network(net)
        return net

    def remove_network(self, ref: str) -> None:
        net = self.find("network", ref)
        users = [s["Spec"]["Name"] for s in self.store.peek("service")
                 if any(a["Target"] == net["ID"] for a in s["Spec"]["TaskTemplate"]["Networks"])]
        if net["Spec"].get("Ingress"):
            users += [s["Spec"]["Name"] for s in self.store.peek("service")
                      if any(p["PublishMode"] == "ingress"
                             for p in s.get("Endpoint", {}).get("Ports", []))]
        if users:
            raise Conflict(f"network {net['Spec']['Name']} is in use by service "
                           f"{', '.join(sorted(users))}")
        live = [t for t in self.store.peek("task") if t["Status"]["State"] not in TERMINAL and any(
            a["Network"]["ID"] == net["ID"] for a in t.get("NetworksAttachments", []))]
        if live:
            raise Conflict(f"network {net['Spec']['Name']} still has {len(live)} tasks on it")
        with self.store.tx() as tx:
            tx.delete("network", net["ID"])

    # --- services ---

    def _resolve_networks(self, spec: Obj) -> list[Obj]:
        networks = []
        seen = set()
        for attachment in spec["TaskTemplate"]["Networks"]:
            net = self.find("network", attachment["Target"])
            if net["ID"] in seen:
                raise InvalidArgument(f"network {net['Spec']['Name']} is attached twice")
            if net["Spec"].get("Ingress"):
                raise InvalidArgument("a service cannot be attached to the ingress network "
                                      "directly: publish a port instead")
            seen.add(net["ID"])
            attachment["Target"] = net["ID"]
            networks.append(net)
        return networks

    def _endpoint(self, service_id: str, spec: Obj, networks: list[Obj], old: Obj | None) -> Obj:
        """The service's Endpoint: its published ports, and a VIP per network in vip mode
        (the ingress network included when it publishes in ingress mode), kept across updates.
        On failure nothing stays allocated."""
        old_endpoint = (old or {}).get("Endpoint", {})
        ports = self.allocator.publish(service_id, spec["EndpointSpec"].get("Ports", []),
                                       old_endpoint.get("Ports", []))
        endpoint: Obj = {"Spec": copy.deepcopy(spec["EndpointSpec"])}
        if ports:
            endpoint["Ports"] = ports
        if any(p["PublishMode"] == "ingress" for p in ports):
            ingress = ingress_network(self.store)
            if ingress is None:
                self.allocator.release_ports(service_id, old_endpoint.get("Ports", []))
                raise Conflict("there is no ingress network to publish ports on")
            networks = [*networks, ingress]
        kept = {v["NetworkID"]: v for v in old_endpoint.get("VirtualIPs", [])}
        vips = []
        try:
            for net in networks:
                if spec["EndpointSpec"]["Mode"] != "vip":
                    continue
                if net["ID"] in kept:
                    vips.append(kept[net["ID"]])
                else:
                    vips.append({"NetworkID": net["ID"],
                                 "Addr": self.allocator.allocate(net["ID"], service_id)})
        except Exception:
            self._release_unused(service_id, {"VirtualIPs": vips}, old_endpoint)
            raise
        if vips:
            endpoint["VirtualIPs"] = vips
        return endpoint

    def _release_unused(self, service_id: str, old: Obj, new: Obj) -> None:
        """Free what endpoint old holds and endpoint new does not."""
        kept = {(v["NetworkID"], v["Addr"]) for v in new.get("VirtualIPs", [])}
        for vip in old.get("VirtualIPs", []):
            if (vip["NetworkID"], vip["Addr"]) not in kept:
                self.allocator.release(vip["NetworkID"], vip["Addr"], service_id)
        self.allocator.release_ports(service_id, new.get("Ports", []))

    def create_service(self, body: Any) -> Obj:
        spec = specs.service_spec(body)
        if self.store.by_name("service", spec["Name"]) is not None:
            raise Conflict(f"service {spec['Name']} already exists")
        networks = self._resolve_networks(spec)
        service_id = new_id()
        endpoint = self._endpoint(service_id, spec, networks, None)
        ts = now()
        svc = {"ID": service_id, "Version": {"Index": 0}, "CreatedAt": ts, "UpdatedAt": ts,
               "Spec": spec, "Endpoint": endpoint}
        try:
            with self.store.tx() as tx:
                tx.create("service", svc)
        except Exception:
            self.allocator.release_service(svc)
            raise
        return svc

    def update_service(self, ref: str, version: Any, body: Any, rollback: bool = False) -> Obj:
        """POST /services/{id}/update; `rollback` (Docker's rollback=previous) ignores the
        body and goes back to PreviousSpec."""
        svc = self.find("service", ref)
        try:
            version = int(version)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument("the version query parameter is required: the service's "
                                  "Version.Index as you last read it") from exc
        if rollback and not svc.get("PreviousSpec"):
            raise InvalidArgument(f"service {svc['Spec']['Name']} has no previous spec to "
                                  "roll back to")
        spec = specs.service_spec(svc["PreviousSpec"] if rollback else body)
        if spec["Name"] != svc["Spec"]["Name"]:
            raise InvalidArgument("renaming a service is not supported")
        if ("Global" in spec["Mode"]) != ("Global" in svc["Spec"]["Mode"]):
            raise InvalidArgument("a service's mode (replicated or global) cannot change")
        networks = self._resolve_networks(spec)
        endpoint = self._endpoint(svc["ID"], spec, networks, svc)
        new = copy.deepcopy(svc)
        new["PreviousSpec"] = svc["Spec"]
        new["Spec"] = spec
        new["Endpoint"] = endpoint
        if spec["TaskTemplate"] != svc["Spec"]["TaskTemplate"]:
            # The orchestrator paces the update and moves this on (manager/updates.py).
            new["UpdateStatus"] = {
                "State": "rollback_started" if rollback else "updating", "StartedAt": now(),
                "Message": "manually requested rollback" if rollback else "update in progress"}
        try:
            with self.store.tx() as tx:
                tx.update("service", new, version=version)
        except Exception:
            self._release_unused(svc["ID"], endpoint, svc.get("Endpoint", {}))
            raise
        self._release_unused(svc["ID"], svc.get("Endpoint", {}), endpoint)
        return new

    def remove_service(self, ref: str) -> None:
        svc = self.find("service", ref)
        with self.store.tx() as tx:
            tx.delete("service", svc["ID"])
            for task in self.store.peek("task"):
                if task["ServiceID"] == svc["ID"] and task["DesiredState"] != "remove":
                    task = copy.deepcopy(task)
                    task["DesiredState"] = "remove"
                    tx.update("task", task)
        # Free the VIPs and ports now, so the next request can take them at once.
        self.allocator.release_service(svc)
