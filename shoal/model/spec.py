"""Validation of what users send: service and network specs in the Docker API's shapes.

Each check raises InvalidArgument with a message that names the field and what is wrong, before
anything is allocated or stored.
"""

from __future__ import annotations

import copy
from typing import Any

from shoal.errors import InvalidArgument
from shoal.model.objects import Obj, check_name

RESTART_CONDITIONS = ("none", "on-failure", "any")
DEFAULT_RESTART_DELAY_NS = 5_000_000_000  # swarmkit's default


def _dict(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be an object")
    return value


def _str_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{field} must be a list of strings")
    return value


def _labels(value: Any, field: str) -> dict[str, str]:
    labels = _dict(value, field)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidArgument(f"{field} must map strings to strings")
    return labels


def service_spec(body: Any) -> Obj:
    """A normalised copy of a ServiceSpec; network targets are left for the caller to resolve."""
    if not isinstance(body, dict):
        raise InvalidArgument("the service spec must be a JSON object")
    spec = copy.deepcopy(body)
    check_name("service", spec.get("Name"))
    spec["Labels"] = _labels(spec.get("Labels"), "Labels")
    template = spec["TaskTemplate"] = _dict(spec.get("TaskTemplate"), "TaskTemplate")
    container = template["ContainerSpec"] = _dict(template.get("ContainerSpec"),
                                                  "TaskTemplate.ContainerSpec")
    image = container.get("Image")
    if not isinstance(image, str) or not image.strip():
        raise InvalidArgument("TaskTemplate.ContainerSpec.Image: an image reference is required")
    for field in ("Command", "Args", "Env"):
        _str_list(container.get(field), f"ContainerSpec.{field}")
    if container.get("Dir") is not None and not isinstance(container["Dir"], str):
        raise InvalidArgument("ContainerSpec.Dir must be a string")

    health = container.get("Healthcheck")
    if health is not None:
        health = _dict(health, "ContainerSpec.Healthcheck")
        test = _str_list(health.get("Test"), "Healthcheck.Test")
        if test and test[0] not in ("NONE", "CMD", "CMD-SHELL"):
            raise InvalidArgument("Healthcheck.Test must start with NONE, CMD or CMD-SHELL")
        if test[:1] in (["CMD"], ["CMD-SHELL"]) and len(test) < 2:
            raise InvalidArgument("Healthcheck.Test names no command")
        for field in ("Interval", "Timeout", "StartPeriod", "Retries"):
            value = health.get(field)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise InvalidArgument(f"Healthcheck.{field} must be a whole number >= 0")
        for field in ("Interval", "Timeout"):
            if 0 < (health.get(field) or 0) < 1_000_000:
                raise InvalidArgument(f"Healthcheck.{field} must be at least 1ms")
    grace = container.get("StopGracePeriod")
    if grace is not None and (not isinstance(grace, int) or grace < 0):
        raise InvalidArgument("ContainerSpec.StopGracePeriod must be a whole number of ns >= 0")

    restart = template["RestartPolicy"] = _dict(template.get("RestartPolicy"), "RestartPolicy")
    condition = restart.setdefault("Condition", "any")
    if condition not in RESTART_CONDITIONS:
        raise InvalidArgument(f"RestartPolicy.Condition must be one of {RESTART_CONDITIONS}")
    for field in ("Delay", "MaxAttempts", "Window"):
        value = restart.get(field)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise InvalidArgument(f"RestartPolicy.{field} must be a whole number >= 0")

    # The top-level Networks field is the older place for them; Docker moved it to TaskTemplate.
    networks = template.get("Networks") or spec.pop("Networks", None) or []
    if not isinstance(networks, list):
        raise InvalidArgument("TaskTemplate.Networks must be a list")
    for attachment in networks:
        if not isinstance(attachment, dict) or not isinstance(attachment.get("Target"), str) \
                or not attachment["Target"]:
            raise InvalidArgument("each network attachment needs a Target (network name or id)")
        aliases = _str_list(attachment.get("Aliases"), "Networks.Aliases")
        for alias in aliases:
            check_name("alias", alias)
    template["Networks"] = networks
    spec.pop("Networks", None)

    # The docker SDK writes the mode key in lower case ("replicated") on update.
    mode = {k.capitalize(): v for k, v in _dict(spec.get("Mode"), "Mode").items()}
    spec["Mode"] = mode = mode or {"Replicated": {}}
    if set(mode) - {"Replicated", "Global"} or len(mode) != 1:
        raise InvalidArgument("Mode must be either Replicated or Global")
    if "Replicated" in mode:
        replicated = mode["Replicated"] = _dict(mode["Replicated"], "Mode.Replicated")
        replicas = replicated.setdefault("Replicas", 1)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise InvalidArgument(f"Mode.Replicated.Replicas must be a whole number >= 0, "
                                  f"not {replicas!r}")

    endpoint = spec["EndpointSpec"] = _dict(spec.get("EndpointSpec"), "EndpointSpec")
    endpoint.setdefault("Mode", "vip")
    if endpoint["Mode"] not in ("vip", "dnsrr"):
        raise InvalidArgument("EndpointSpec.Mode must be vip or dnsrr")
    endpoint["Ports"] = ports(endpoint.get("Ports"), endpoint["Mode"])
    if not endpoint["Ports"]:
        del endpoint["Ports"]
    return spec


def ports(value: Any, endpoint_mode: str) -> list[Obj]:
    """EndpointSpec.Ports, checked: each {Protocol, TargetPort, PublishedPort, PublishMode}."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument("EndpointSpec.Ports must be a list")
    out, seen = [], set()
    for port in value:
        port = dict(_dict(port, "EndpointSpec.Ports[]"))
        proto = port.setdefault("Protocol", "tcp")
        if proto not in ("tcp", "udp"):
            raise InvalidArgument(f"port protocol {proto!r}: use tcp or udp")
        mode = port.setdefault("PublishMode", "ingress")
        if mode not in ("ingress", "host"):
            raise InvalidArgument(f"port publish mode {mode!r}: use ingress or host")
        target = port.get("TargetPort")
        published = port.setdefault("PublishedPort", 0)
        for field, number, low in (("TargetPort", target, 1), ("PublishedPort", published, 0)):
            if not isinstance(number, int) or isinstance(number, bool) \
                    or not low <= number <= 65535:
                raise InvalidArgument(f"{field} must be a port number from {low} to 65535, "
                                      f"not {number!r}")
        if mode == "host" and not published:
            raise InvalidArgument(f"host mode port {target}/{proto} needs a published port")
        if mode == "ingress" and endpoint_mode == "dnsrr":
            raise InvalidArgument("ports published in ingress mode need endpoint mode vip "
                                  "(dnsrr has no VIP to balance with)")
        key = (published or f"auto{target}", proto)
        if key in seen:
            raise InvalidArgument(f"port {published}/{proto} is published twice")
        seen.add(key)
        out.append(port)
    return out


def replicas(spec: Obj) -> int | None:
    """The wanted replica count, or None for a global service."""
    mode = spec["Mode"]
    return mode["Replicated"]["Replicas"] if "Replicated" in mode else None


def network_request(body: Any) -> Obj:
    """Check a POST /networks/create body (Docker's NetworkCreateRequest)."""
    if not isinstance(body, dict):
        raise InvalidArgument("the network request must be a JSON object")
    check_name("network", body.get("Name"))
    driver = body.get("Driver") or "overlay"
    if driver != "overlay":
        raise InvalidArgument(f"driver {driver!r} is not supported: shoal networks are overlay")
    options = _labels(body.get("Options"), "Options")
    if "encrypted" in options and options["encrypted"].lower() in ("false", "0", "no"):
        # Docker takes the key's presence as the request; a value that reads as "no" is
        # more likely a mistake than a wish for cleartext: refuse rather than guess.
        raise InvalidArgument(f"option encrypted={options['encrypted']!r}: give `encrypted` "
                              "(or encrypted=true) for an encrypted network, or leave it out")
    if body.get("Ingress"):
        raise InvalidArgument("ingress networks are not supported yet (they come with the "
                              "routing mesh)")
    if body.get("EnableIPv6"):
        raise InvalidArgument("IPv6 overlays are not supported")
    ipam = _dict(body.get("IPAM"), "IPAM")
    if ipam.get("Driver") not in (None, "", "default"):
        raise InvalidArgument(f"IPAM driver {ipam['Driver']!r} is not supported")
    configs = ipam.get("Config") or []
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise InvalidArgument("IPAM.Config must be a list of objects")
    for config in configs:
        if config.get("IPRange") or config.get("AuxiliaryAddresses"):
            raise InvalidArgument("IPAM IPRange and AuxiliaryAddresses are not supported")
    return {
        "Name": body["Name"], "Labels": _labels(body.get("Labels"), "Labels"),
        "DriverConfiguration": {"Name": "overlay", "Options": options},
        "Internal": bool(body.get("Internal")), "Attachable": bool(body.get("Attachable")),
        "Ingress": bool(body.get("Ingress")), "IPAM": {"Config": configs},
    }
