"""The control API: what a user's request does to the store (swarmkit's controlapi).

Each operation validates first, allocates second and writes one transaction last, so a refused
request leaves nothing behind: an allocation made before a failing write is given back.
"""

from __future__ import annotations

import copy
from typing import Any

from shoal.errors import Conflict, InvalidArgument, NotFound
from shoal.manager.allocator import VNI_KEY, Allocator
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
            seen.add(net["ID"])
            attachment["Target"] = net["ID"]
            networks.append(net)
        return networks

    def _endpoint(self, service_id: str, spec: Obj, networks: list[Obj], old: Obj | None) -> Obj:
        """The service's Endpoint: a VIP per network in vip mode, kept across updates."""
        mode = spec["EndpointSpec"]["Mode"]
        kept = {v["NetworkID"]: v for v in (old or {}).get("Endpoint", {}).get("VirtualIPs", [])}
        vips = []
        try:
            for net in networks:
                if mode != "vip":
                    continue
                if net["ID"] in kept:
                    vips.append(kept[net["ID"]])
                else:
                    vips.append({"NetworkID": net["ID"],
                                 "Addr": self.allocator.allocate(net["ID"], service_id)})
        except Exception:
            for vip in vips:
                if vip["NetworkID"] not in kept:
                    self.allocator.release(vip["NetworkID"], vip["Addr"], service_id)
            raise
        endpoint: Obj = {"Spec": copy.deepcopy(spec["EndpointSpec"])}
        if vips:
            endpoint["VirtualIPs"] = vips
        return endpoint

    def _release_unused_vips(self, service_id: str, old: Obj, new_endpoint: Obj) -> None:
        kept = {(v["NetworkID"], v["Addr"]) for v in new_endpoint.get("VirtualIPs", [])}
        for vip in old.get("Endpoint", {}).get("VirtualIPs", []):
            if (vip["NetworkID"], vip["Addr"]) not in kept:
                self.allocator.release(vip["NetworkID"], vip["Addr"], service_id)

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

    def update_service(self, ref: str, version: Any, body: Any) -> Obj:
        svc = self.find("service", ref)
        try:
            version = int(version)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument("the version query parameter is required: the service's "
                                  "Version.Index as you last read it") from exc
        spec = specs.service_spec(body)
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
        try:
            with self.store.tx() as tx:
                tx.update("service", new, version=version)
        except Exception:
            self._release_unused_vips(svc["ID"], new, svc.get("Endpoint", {}))
            raise
        self._release_unused_vips(svc["ID"], svc, endpoint)
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
