"""Encrypted overlays without root: the UAPI protocol (render and parse), the WireGuard peers
and VXLAN devices planned from a view, the node filter, the view's keys section, the key
rotation, and the scheduler refusing nodes that cannot encrypt."""

from __future__ import annotations

import copy

import pytest

from shoal.dataplane import wg_uapi
from shoal.dataplane.firewall import render, script
from shoal.dataplane.plan import Vxlan, plan_fdb, plan_networks, plan_task_links, plan_vxlan
from shoal.dataplane.wireguard import load_or_make_key, plan_peers, public_b64
from shoal.errors import InvalidArgument, KernelError
from shoal.manager import Manager, encryption, keys
from shoal.model import view as nv
from shoal.store import SQLiteStore

K1, K2, K3 = ("01" * 32), ("02" * 32), ("03" * 32)
PSK = "aa" * 32


def _b64(hexkey: str) -> str:
    return wg_uapi.hex_to_b64(hexkey)


# --- UAPI ---

GET_REPLY = f"""private_key={"e0" * 32}
listen_port=51820
public_key={K1}
preshared_key={PSK}
protocol_version=1
endpoint=198.18.0.12:51820
last_handshake_time_sec=1700000000
last_handshake_time_nsec=500000000
tx_bytes=100
rx_bytes=200
persistent_keepalive_interval=0
allowed_ip=100.64.0.2/32
public_key={K2}
preshared_key={"0" * 64}
protocol_version=1
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
errno=0

"""


def test_parse_get_reads_device_and_peers() -> None:
    dev = wg_uapi.parse_get(GET_REPLY)
    assert dev.private_key == "e0" * 32 and dev.listen_port == 51820
    p1, p2 = dev.peers[K1], dev.peers[K2]
    assert p1 == wg_uapi.Peer(K1, "198.18.0.12:51820", ("100.64.0.2/32",), PSK)
    assert p1.last_handshake == 1700000000.5 and (p1.rx_bytes, p1.tx_bytes) == (200, 100)
    assert p2.preshared_key == "" and p2.endpoint == "" and p2.allowed_ips == ()


def test_parse_get_refuses_an_error() -> None:
    with pytest.raises(KernelError, match="errno=2"):
        wg_uapi.parse_get("errno=2\n\n")
    assert wg_uapi.parse_errno("listen_port=1\n") == -1


def test_render_set_from_nothing_writes_everything_and_never_replaces_peers() -> None:
    want = wg_uapi.Device("e0" * 32, 51820, {K1: wg_uapi.Peer(
        K1, "198.18.0.12:51820", ("100.64.0.2/32",), PSK)})
    assert wg_uapi.render_set(None, want) == (
        f"set=1\nprivate_key={'e0' * 32}\nlisten_port=51820\npublic_key={K1}\n"
        f"preshared_key={PSK}\nendpoint=198.18.0.12:51820\nreplace_allowed_ips=true\n"
        "allowed_ip=100.64.0.2/32\n\n")
    assert "replace_peers" not in wg_uapi.render_set(None, want)


def test_render_set_writes_only_the_difference() -> None:
    have = wg_uapi.parse_get(GET_REPLY)
    # The same configuration (handshake counters differ): nothing to say.
    same = wg_uapi.Device(have.private_key, 51820, {
        K1: wg_uapi.Peer(K1, "198.18.0.12:51820", ("100.64.0.2/32",), PSK),
        K2: wg_uapi.Peer(K2)})
    assert wg_uapi.render_set(have, same) == ""
    # A rotated key on K1, K2 gone, K3 new: one request, no device lines.
    new_psk = "bb" * 32
    want = wg_uapi.Device(have.private_key, 51820, {
        K1: wg_uapi.Peer(K1, "198.18.0.12:51820", ("100.64.0.2/32",), new_psk),
        K3: wg_uapi.Peer(K3, "198.18.0.13:51820", ("100.64.0.3/32",), new_psk)})
    text = wg_uapi.render_set(have, want)
    assert text.startswith("set=1\n") and text.endswith("\n\n")
    lines = text.split("\n")
    assert "private_key=" not in text and "listen_port=" not in text
    assert lines[1:3] == [f"public_key={K2}", "remove=true"]
    assert f"public_key={K1}" in lines and f"preshared_key={new_psk}" in lines
    assert f"public_key={K3}" in lines and "endpoint=198.18.0.13:51820" in lines


def test_keys_convert_and_bad_ones_are_refused(tmp_path) -> None:
    assert wg_uapi.b64_to_hex(_b64(K1)) == K1
    with pytest.raises(KernelError):
        wg_uapi.b64_to_hex("c2hvcnQ=")
    key = load_or_make_key(tmp_path / "wireguard.key")
    assert (tmp_path / "wireguard.key").stat().st_mode & 0o777 == 0o600
    assert public_b64(load_or_make_key(tmp_path / "wireguard.key")) == public_b64(key)


# --- plans from a view ---


def _view(encrypted: bool = True) -> nv.NodeView:
    def peer(i: int, ready: bool = True) -> nv.PeerEntry:
        return {"id": f"n{i}", "name": f"node{i}", "addr": f"198.18.0.{10 + i}",
                "ingress_addr": "", "wg_key": _b64(f"{i:02x}" * 32) if ready else "",
                "wg_port": 51820, "tunnel_addr": f"100.64.0.{i}"}

    view = nv.empty_view(peer(1))
    view["networks"] = {
        "sec": {"id": "sec", "name": "sec", "subnet": "10.0.1.0/24", "gateway": "10.0.1.1",
                "vni": 4097, "internal": False, "encrypted": encrypted, "ingress": False},
        "pub": {"id": "pub", "name": "pub", "subnet": "10.0.2.0/24", "gateway": "10.0.2.1",
                "vni": 4098, "internal": False, "encrypted": False, "ingress": False}}
    view["peers"] = {"n2": peer(2), "n3": peer(3)}

    def ep(task: str, node: str, net: str, ip: str) -> nv.EndpointEntry:
        return {"id": task, "name": task, "service_id": "s", "node_id": node,
                "state": "running", "healthy": True,
                "addrs": {net: {"ip": ip, "prefixlen": 24, "mac": nv.mac_for(ip)}}}

    view["endpoints"] = {"t1": ep("t1", "n1", "sec", "10.0.1.3"),
                         "t2": ep("t2", "n2", "sec", "10.0.1.4"),
                         "t3": ep("t3", "n3", "pub", "10.0.2.3")}
    view["tasks"] = {"t1": {"id": "t1", "name": "s.1",  # type: ignore[typeddict-item]
                            "addrs": view["endpoints"]["t1"]["addrs"]}}
    view["keys"] = {"psk": {"id": "psk", "key": _b64(PSK), "generation": 3}}
    return view


def test_peers_are_the_nodes_sharing_an_encrypted_network_with_the_psk() -> None:
    peers = plan_peers(_view(), "n1")
    assert list(peers) == [K2]  # n3 shares only the unencrypted network
    assert peers[K2] == wg_uapi.Peer(K2, "198.18.0.12:51820", ("100.64.0.2/32",), PSK)
    assert plan_peers(_view(encrypted=False), "n1") == {}


def test_a_peer_without_a_key_is_left_out() -> None:
    view = _view()
    view["peers"]["n2"]["wg_key"] = ""
    assert plan_peers(view, "n1") == {}


def test_encrypted_vxlan_runs_between_tunnel_addresses_with_a_smaller_mtu() -> None:
    view = _view()
    assert plan_vxlan(view, "198.18.0.11", "100.64.0.1", 1450) == {
        4097: Vxlan("100.64.0.1", 4790, 1370, checksum=False),
        4098: Vxlan("198.18.0.11", 4789, 1450)}
    fdb = {(e.vni, e.peer_addr) for e in plan_fdb(view, "n1")}
    assert fdb == {(4097, "100.64.0.2"), (4098, "198.18.0.13")}
    (link,) = plan_task_links(view["tasks"]["t1"], view)
    assert link.encrypted


def test_a_node_that_cannot_encrypt_builds_no_encrypted_network() -> None:
    view = _view()
    assert plan_vxlan(view, "198.18.0.11", None, 1450) == {4098: Vxlan("198.18.0.11", 4789,
                                                                          1450)}
    assert plan_networks(view, None) == {4098: "pub"}


def test_the_filter_takes_encrypted_vxlan_only_from_the_tunnel() -> None:
    view = _view()
    text = script(render(view, "eth0", "198.18.0.11:2377", (80,), closed=True,
                         wireguard=("shwgabc", 51820)))
    guard = text.split("chain input {")[1].split("\n  }")[0].splitlines()
    assert guard[2:5] == ['    iifname "shwgabc" goto from_tunnel',
                          "    udp dport 4790 counter drop",
                          "    udp dport 4789 @th,96,24 { 4097 } counter drop"]
    assert "ip saddr @peers udp dport 51820 accept" in text
    assert "ip daddr @peers udp dport 51820 drop" in text  # tasks cannot reach peers' WG
    tunnel = text.split("chain from_tunnel {")[1].split("\n  }")[0]
    assert "udp dport 4790 accept" in tunnel and tunnel.strip().endswith("counter drop")
    # Encrypted VXLAN leaves only into the tunnel (wireguard-go gone: dropped, not routed).
    assert 'udp dport 4790 oifname != "shwgabc" counter drop' in text
    # A node that cannot encrypt still drops cleartext for the encrypted VNI.
    text = script(render(view, "eth0", None, (80,)))
    assert "from_tunnel" not in text and "@th,96,24 { 4097 } counter drop" in text


# --- the view ---


def test_the_keys_section_is_diffed_like_the_others() -> None:
    old = _view()
    new = copy.deepcopy(old)
    new["keys"]["psk"] = {"id": "psk", "key": _b64("bb" * 32), "generation": 4}
    delta = nv.diff(old, new)
    assert delta is not None and set(delta) == {"keys", "revision"}
    assert nv.apply_delta(old, delta)["keys"]["psk"]["generation"] == 4
    legacy = {k: v for k, v in old.items() if k != "keys"}  # a view from an older manager
    assert nv.diff(legacy, old)["keys"]["set"] == {"psk": old["keys"]["psk"]}  # type: ignore


# --- the manager ---


def test_interval_parsing_and_its_floor(monkeypatch) -> None:
    assert keys.parse_interval("12h") == 43200 and keys.parse_interval("1h30m") == 5400
    assert keys.parse_interval("90") == 90
    with pytest.raises(InvalidArgument, match="below the minimum of 60s"):
        keys.parse_interval("5s")
    with pytest.raises(InvalidArgument):
        keys.parse_interval("soon")
    monkeypatch.setenv(keys.SHORT_ROTATION_ENV, "1")
    assert keys.parse_interval("2s") == 2
    with pytest.raises(InvalidArgument):
        keys.parse_interval("0.5s")


def test_the_key_rotates_on_schedule_and_survives_a_restart(tmp_path) -> None:
    now = [1000.0]
    woken: list[float] = []
    store = SQLiteStore(tmp_path / "s.db")
    Manager(store, "198.18.0.11:2377")  # makes the cluster object
    rot = keys.KeyRotator(store, 60, woken.append, clock=lambda: now[0])
    rot.tick()
    first = keys.of(store.list("cluster")[0])
    assert first["Generation"] == 1 and first["RotatedAt"] == 1000 and woken
    now[0] = 1059
    rot.tick()
    assert keys.of(store.list("cluster")[0]) == first
    now[0] = 1060
    rot.tick()
    second = keys.of(store.list("cluster")[0])
    assert second["Generation"] == 2 and second["Key"] != first["Key"]
    store.close()
    store = SQLiteStore(tmp_path / "s.db")  # a restarted manager keeps key and schedule
    keys.KeyRotator(store, 60, woken.append, clock=lambda: now[0] + 30).tick()
    assert keys.of(store.list("cluster")[0]) == second
    assert "Key" not in keys.public_cluster(store.list("cluster")[0])["Shoal"]["Encryption"]


def _ready(i: int) -> dict:
    return {"ready": True, "pubkey": _b64(f"{i:02x}" * 32), "port": 51820,
            "interface": f"shwg{i}"}


def test_tunnel_addresses_are_distinct_and_kept(tmp_path) -> None:
    m = Manager(SQLiteStore(tmp_path / "s.db"), "198.18.0.11:2377")
    for i in (1, 2):
        m.dispatcher._register({"node_id": f"n{i}", "hostname": f"node{i}",
                                "addr": f"198.18.0.{10 + i}", "encryption": _ready(i)})
    recs = {n["ID"]: encryption.of(n) for n in m.store.list("node")}
    assert {r["TunnelAddr"] for r in recs.values()} == {"100.64.0.1", "100.64.0.2"}
    m.dispatcher._register({"node_id": "n2", "hostname": "node2", "addr": "198.18.0.12",
                            "encryption": {"ready": False, "error": "gone"}})
    rec = encryption.of(m.store.get("node", "n2"))
    assert rec["TunnelAddr"] == recs["n2"]["TunnelAddr"] and not rec["Ready"]
    assert encryption.why_not(m.store.get("node", "n2")) == "gone"


def test_tasks_of_an_encrypted_network_go_only_where_encryption_is_up(tmp_path) -> None:
    m = Manager(SQLiteStore(tmp_path / "s.db"), "198.18.0.11:2377")
    for i in (1, 2, 3):
        enc = _ready(i) if i != 3 else {"ready": False, "port": 51820,
                                        "error": "wireguard-go not found"}
        m.dispatcher._register({"node_id": f"n{i}", "hostname": f"node{i}",
                                "addr": f"198.18.0.{10 + i}", "encryption": enc})
    m.settle()
    m.control.create_network({"Name": "sec", "Options": {"encrypted": ""}})
    m.control.create_network({"Name": "pub"})
    spec = {"TaskTemplate": {"ContainerSpec": {"Image": "x", "Args": ["true"]}}}
    for name, net, mode in (("s", "sec", {"Replicated": {"Replicas": 6}}),
                            ("g", "sec", {"Global": {}}),
                            ("p", "pub", {"Replicated": {"Replicas": 3}})):
        body = copy.deepcopy(spec) | {"Name": name, "Mode": mode}
        body["TaskTemplate"]["Networks"] = [{"Target": net}]
        m.control.create_service(body)
    m.settle()
    tasks = m.store.list("task")
    svc = {s["Spec"]["Name"]: s["ID"] for s in m.store.list("service")}
    placed = {name: sorted(t.get("NodeID") or "-" for t in tasks if t["ServiceID"] == sid
                           and t["Status"]["State"] == "assigned")
              for name, sid in svc.items()}
    assert placed["s"] == ["n1"] * 3 + ["n2"] * 3
    assert placed["g"] == ["n1", "n2"]
    assert "n3" in placed["p"]  # unencrypted networks do not care
    (stuck,) = [t for t in tasks if t["ServiceID"] == svc["g"]
                and t["Status"]["State"] == "pending"]
    assert "encryption is not up on node3: wireguard-go not found" in stuck["Status"]["Err"]
    # The view of an encrypted network's node carries the key and the peers' WG details.
    from shoal.manager.dispatcher import ViewIndex

    view = ViewIndex(m.store).view(m.store.get("node", "n1"))
    assert view["keys"]["psk"]["generation"] == 1
    assert view["peers"]["n2"]["wg_key"] == _ready(2)["pubkey"]
    assert view["node"]["tunnel_addr"] == "100.64.0.1"


@pytest.mark.parametrize("cpus,mask", [(1, "1"), (2, "3"), (4, "f"), (32, "ffffffff"),
                                       (33, "1,ffffffff"), (40, "ff,ffffffff"),
                                       (64, "ffffffff,ffffffff")])
def test_rps_mask_covers_every_cpu_in_sysfs_format(cpus, mask):
    from shoal.dataplane.wireguard import cpu_mask

    assert cpu_mask(cpus) == mask
