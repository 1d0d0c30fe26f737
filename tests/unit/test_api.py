"""The Docker API surface: shapes the docker CLI reads, and bad input refused with nothing made."""

import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoal.api.app import make_app
from shoal.manager import Manager
from shoal.store import SQLiteStore


@pytest.fixture
async def api(tmp_path):
    m = Manager(SQLiteStore(tmp_path / "s.db"), "198.18.0.11:2377")
    for i in (1, 2):
        m.dispatcher._register({"node_id": f"n{i}", "hostname": f"node{i}",
                                "addr": f"198.18.0.{10 + i}"})
    async with TestClient(TestServer(make_app(m))) as client:
        client.manager = m
        yield client


def service(name="web", replicas=2, network="appnet"):
    return {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "local", "Args": ["true"]},
                                           "Networks": [{"Target": network}]},
            "Mode": {"Replicated": {"Replicas": replicas}}}


async def make_network(api, name="appnet", **extra):
    r = await api.post("/v1.47/networks/create", json={"Name": name, "Driver": "overlay", **extra})
    return r.status, await r.json()


def counts(api):
    m = api.manager
    return (len(m.store.list("service")), len(m.store.list("network")),
            {k: len(p.owners) for k, p in m.allocator.pools.items()})


async def test_ping_advertises_the_api_version(api):
    r = await api.head("/_ping")
    assert r.status == 200 and r.headers["API-Version"] == "1.47"


async def test_errors_are_json_messages_with_exact_content_type(api):
    r = await api.get("/v1.47/services/nope")
    assert r.status == 404
    assert r.headers["Content-Type"] == "application/json"
    assert "nope" in (await r.json())["message"]
    r = await api.get("/v1.47/containers/x/json")
    assert r.status == 404 and "message" in await r.json()


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "malformed JSON"),
    (json.dumps(service(network="nosuchnet")).encode(), 404, "nosuchnet"),
    (json.dumps(service(replicas=-1)).encode(), 400, "Replicas"),
    (json.dumps(service(name="bad name!")).encode(), 400, "invalid service name"),
    (json.dumps({**service(), "Mode": {"Replicated": {"Replicas": "3"}}}).encode(), 400,
     "Replicas"),
    (json.dumps({"Name": "x"}).encode(), 400, "image"),
])
async def test_bad_service_create_is_refused_and_allocates_nothing(api, body, status, words):
    await make_network(api)
    before = counts(api)
    r = await api.post("/v1.47/services/create", data=body,
                       headers={"Content-Type": "application/json"})
    assert r.status == status
    assert words.lower() in (await r.json())["message"].lower()
    assert counts(api) == before


async def test_duplicate_names_conflict(api):
    assert (await make_network(api))[0] == 201
    status, body = await make_network(api)
    assert status == 409 and "already exists" in body["message"]
    r = await api.post("/services/create", json=service())
    assert r.status == 201
    before = counts(api)
    r = await api.post("/services/create", json=service())
    assert r.status == 409 and "already exists" in (await r.json())["message"]
    assert counts(api) == before


@pytest.mark.parametrize("subnet, status, words", [
    ("10.0.1.128/25", 409, "overlaps"),
    ("10.0.1.0/33", 400, "invalid subnet"),
    ("10.0.9.1/24", 400, "invalid subnet"),  # host bits set
    ("banana", 400, "invalid subnet"),
    ("10.9.0.0/30", 400, "too small"),
])
async def test_bad_subnets_are_refused(api, subnet, status, words):
    await make_network(api, IPAM={"Config": [{"Subnet": "10.0.1.0/24"}]})
    before = counts(api)
    code, body = await make_network(api, "other", IPAM={"Config": [{"Subnet": subnet}]})
    assert code == status and words in body["message"]
    assert counts(api) == before


async def test_stale_version_on_update_is_refused(api):
    await make_network(api)
    r = await api.post("/services/create", json=service())
    sid = (await r.json())["ID"]
    svc = await (await api.get(f"/services/{sid}")).json()
    version = svc["Version"]["Index"]
    spec = svc["Spec"]
    spec["Mode"]["Replicated"]["Replicas"] = 4
    r = await api.post(f"/v1.47/services/{sid}/update?version={version}", json=spec)
    assert r.status == 200 and await r.json() == {"Warnings": None}
    r = await api.post(f"/v1.47/services/{sid}/update?version={version}", json=spec)
    assert r.status == 409 and "out of sequence" in (await r.json())["message"]


async def test_encrypted_network_is_made_and_inspect_says_why_nodes_cannot_carry_it(api):
    code, body = await make_network(api, Options={"encrypted": ""})
    assert code == 201
    net = await (await api.get(f"/networks/{body['Id']}")).json()
    assert net["Options"]["encrypted"] == ""
    nodes = net["Encryption"]["Nodes"]
    # These nodes registered without an encryption report: not ready, and inspect says why.
    assert [(n["Name"], n["Ready"], n["Carrying"]) for n in nodes] == [
        ("node1", False, False), ("node2", False, False)]
    assert all("not reported" in n["Error"] for n in nodes)


async def test_encrypted_false_is_refused_rather_than_guessed(api):
    before = counts(api)
    code, body = await make_network(api, Options={"encrypted": "false"})
    assert code == 400 and "encrypted" in body["message"]
    assert counts(api) == before


async def test_the_api_never_shows_the_preshared_key(api):
    api.manager.settle()
    cluster = api.manager.cluster
    assert cluster["Shoal"]["Encryption"]["Key"]
    for path in ("/swarm", "/info"):
        assert "Key" not in json.dumps(await (await api.get(path)).json()).replace(
            "PublicKey", "")


async def test_network_in_use_cannot_be_removed(api):
    await make_network(api)
    await api.post("/services/create", json=service())
    r = await api.delete("/networks/appnet")
    assert r.status == 409 and "in use" in (await r.json())["message"]


async def test_filters_in_both_forms(api):
    await make_network(api)
    await api.post("/services/create", json=service("web"))
    await api.post("/services/create", json=service("api"))
    for f in ({"name": {"web": True}}, {"name": ["web"]}):
        r = await api.get("/services", params={"filters": json.dumps(f)})
        assert [s["Spec"]["Name"] for s in await r.json()] == ["web"]
    r = await api.get("/services", params={"filters": json.dumps({"bogus": ["x"]})})
    assert r.status == 400


async def test_sdk_shapes_are_accepted(api):
    """docker-py sends a network name as Target, Command not Args, and no Mode."""
    await make_network(api)
    r = await api.post("/services/create", json={
        "Name": "py", "TaskTemplate": {"ContainerSpec": {"Image": "python:3",
                                                         "Command": ["sleep", "1"], "Args": None},
                                       "Networks": [{"Target": "appnet"}]}})
    assert r.status == 201
    svc = await (await api.get("/services/py")).json()
    assert svc["Spec"]["Mode"] == {"Replicated": {"Replicas": 1}}
    net = await (await api.get("/networks/appnet")).json()
    assert svc["Spec"]["TaskTemplate"]["Networks"][0]["Target"] == net["Id"]
    spec = svc["Spec"]
    spec["Mode"] = {"replicated": {"Replicas": 3}}
    r = await api.post(f"/services/py/update?version={svc['Version']['Index']}", json=spec)
    assert r.status == 200
    svc = await (await api.get("/services/py")).json()
    assert svc["Spec"]["Mode"] == {"Replicated": {"Replicas": 3}}


def published(*ports):
    spec = service()
    spec["EndpointSpec"] = {"Ports": [dict(p) for p in ports]}
    return spec


async def test_published_ports_are_allocated_and_conflicts_refused(api):
    await make_network(api)
    r = await api.post("/services/create", json={**published(
        {"TargetPort": 80, "PublishedPort": 8080}, {"TargetPort": 53, "Protocol": "udp"}),
        "Name": "web"})
    assert r.status == 201
    svc = await (await api.get("/services/web")).json()
    ports = svc["Endpoint"]["Ports"]
    assert ports[0] == {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                        "PublishMode": "ingress"}
    assert 30000 <= ports[1]["PublishedPort"] <= 32767
    ingress = await (await api.get("/networks/ingress")).json()
    assert ingress["Ingress"] and {v["NetworkID"] for v in svc["Endpoint"]["VirtualIPs"]} == {
        ingress["Id"], (await (await api.get("/networks/appnet")).json())["Id"]}
    before = counts(api)
    r = await api.post("/services/create", json={**published(
        {"TargetPort": 81, "PublishedPort": 8080}), "Name": "other"})
    assert r.status == 409 and "8080/tcp is already published" in (await r.json())["message"]
    assert counts(api) == before
    # The same port on udp is another port.
    r = await api.post("/services/create", json={**published(
        {"TargetPort": 81, "PublishedPort": 8080, "Protocol": "udp"}), "Name": "other"})
    assert r.status == 201
    # Removing the service frees its ports.
    assert (await api.delete("/services/web")).status == 200
    r = await api.post("/services/create", json={**published(
        {"TargetPort": 80, "PublishedPort": 8080}), "Name": "again"})
    assert r.status == 201


async def test_an_update_keeps_an_auto_published_port(api):
    await make_network(api)
    await api.post("/services/create", json={**published({"TargetPort": 80}), "Name": "web"})
    svc = await (await api.get("/services/web")).json()
    port = svc["Endpoint"]["Ports"][0]["PublishedPort"]
    spec = svc["Spec"]
    spec["Mode"]["Replicated"]["Replicas"] = 3
    r = await api.post(f"/services/web/update?version={svc['Version']['Index']}", json=spec)
    assert r.status == 200
    svc = await (await api.get("/services/web")).json()
    assert svc["Endpoint"]["Ports"][0]["PublishedPort"] == port


@pytest.mark.parametrize("port, words", [
    ({"TargetPort": 0}, "TargetPort"),
    ({"TargetPort": 80, "Protocol": "sctp"}, "protocol"),
    ({"TargetPort": 80, "PublishedPort": 70000}, "PublishedPort"),
    ({"TargetPort": 80, "PublishMode": "host"}, "needs a published port"),
])
async def test_bad_ports_are_refused(api, port, words):
    await make_network(api)
    before = counts(api)
    r = await api.post("/services/create", json=published(port))
    assert r.status == 400 and words in (await r.json())["message"]
    assert counts(api) == before
