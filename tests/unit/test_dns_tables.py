"""The resolver's tables follow the view: a delta gives the same answers as a full rebuild,
touches only the networks it must, and the node's and tasks' resolv.conf are what tasks need."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.dns import resolvconf
from shoal.dns.tables import parse_upstream, parse_upstreams
from shoal.model import view as nv
from tests.unit.dns_views import addrs, ask, base_view, endpoint, tables

NAMES = ["web", "tasks.web", "rr", "tasks.rr", "web.1", "db", "web.appnet", "tasks.db"]


def answers(t, asker: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in NAMES:
        msg = ask(t, asker, name)
        out[name] = addrs(msg) if not hasattr(msg, "upstreams") else "forward"
    return out


def check_delta_equals_rebuild(new: nv.NodeView) -> set[str]:
    old = base_view()
    t = tables(old)
    for asker in ("client", "bclient", "both"):
        answers(t, asker)  # build the caches first: the delta must invalidate them
    delta = nv.diff(old, new)
    assert delta is not None
    touched = t.apply_delta(copy.deepcopy(delta))
    fresh = tables(new)
    for asker in ("client", "bclient", "both"):
        assert answers(t, asker) == answers(fresh, asker), asker
    return touched


def test_scale_up_on_one_network_touches_only_it() -> None:
    new = base_view()
    new["endpoints"]["trr3"] = endpoint("trr3", "rr.3", "srr", {"n1": "10.0.1.23"})
    assert check_delta_equals_rebuild(new) == {"n1"}
    t = tables(base_view())
    t.apply_delta(nv.diff(base_view(), new))  # type: ignore[arg-type]
    assert addrs(ask(t, "client", "tasks.rr")) == ["10.0.1.21", "10.0.1.22", "10.0.1.23"]


def test_task_dying_and_service_removed() -> None:
    new = base_view()
    new["endpoints"]["tweb1"]["healthy"] = False
    new["endpoints"]["tweb1"]["state"] = "failed"
    del new["services"]["sdb"]
    del new["endpoints"]["tdb1"]
    assert check_delta_equals_rebuild(new) == {"n1", "n2"}


def test_network_gone_and_vip_changes() -> None:
    new = base_view()
    new["services"]["sweb"]["vips"]["n1"] = "10.0.1.99"
    check_delta_equals_rebuild(new)
    new = base_view()
    del new["networks"]["n2"]
    new["services"]["sweb"]["vips"].pop("n2")
    new["services"]["sweb"]["aliases"].pop("n2")
    check_delta_equals_rebuild(new)


def test_ingress_network_has_no_names() -> None:
    view = base_view()
    view["networks"]["n1"]["ingress"] = True  # type: ignore[typeddict-unknown-key]
    t = tables(view)
    assert not hasattr(ask(t, "both", "web.backnet"), "upstreams")
    assert hasattr(ask(t, "client", "web"), "upstreams")  # appnet is now ingress: no names


def test_upstream_parsing() -> None:
    assert parse_upstream("198.18.0.2") == ("198.18.0.2", 53)
    assert parse_upstream("198.18.0.2:5353") == ("198.18.0.2", 5353)
    assert parse_upstream("[2001:db8::1]:54") == ("2001:db8::1", 54)
    assert parse_upstream("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("127.0.0.53", "::1", "0.0.0.0", "nonsense", "1.2.3.4:x", "1.2.3.4:0"):
        assert parse_upstream(bad) is None, bad
    assert parse_upstreams(["1.1.1.1", "1.1.1.1", "127.0.0.1", "2.2.2.2", "3.3.3.3",
                            "4.4.4.4"]) == (("1.1.1.1", 53), ("2.2.2.2", 53), ("3.3.3.3", 53))


def test_task_resolv_conf() -> None:
    assert resolvconf.render() == "nameserver 127.0.0.11\noptions ndots:0\n"
    assert resolvconf.render(["corp.test"], ["timeout:1"]) == (
        "nameserver 127.0.0.11\nsearch corp.test\noptions ndots:0 timeout:1\n")
    assert resolvconf.render(None, ["ndots:2"]) == "nameserver 127.0.0.11\noptions ndots:2\n"


def test_node_nameservers_leave_loopback_out() -> None:
    text = "# x\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\n" \
           "nameserver fe80::1%eth0\nsearch lan\n"
    assert resolvconf.nameservers(text) == ["192.0.2.1", "fe80::1%eth0"]


def test_resolv_conf_files(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "p-alive").touch()
    path = resolvconf.write("p-alive", root=tmp_path / "etc")
    assert path.read_text().startswith("nameserver 127.0.0.11")
    resolvconf.write("p-gone", root=tmp_path / "etc")
    resolvconf.write("other-gone", root=tmp_path / "etc")
    assert resolvconf.remove_stale("p-", run, tmp_path / "etc") == ["p-gone"]
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["other-gone", "p-alive"]
    resolvconf.remove("p-alive", tmp_path / "etc")
    resolvconf.remove("p-alive", tmp_path / "etc")  # twice: no error
    assert not (tmp_path / "etc" / "p-alive").exists()


def test_resolver_process_defaults() -> None:
    from shoal.dns.__main__ import parser

    args = parser().parse_args([])
    assert (args.vip_ttl, args.task_ttl, args.loop) == (600, 0, "uvloop")
    assert args.upstream == []


def _public(t) -> dict[str, object]:
    return {n: (names.addrs and {k: sorted(v) for k, v in names.addrs.items()}, names.ttl,
                names.shuffle, {k: sorted(map(repr, v)) for k, v in names.srv.items()},
                names.ptr)
            for n, names in sorted(t.nets.items())}


@st.composite
def edits(draw: st.DrawFn) -> nv.NodeView:
    """The base view after a few random edits of the kinds the manager makes."""
    view = base_view()
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["add", "remove", "health", "alias", "mode", "rename",
                                     "vip", "move"]))
        eps, svcs = view["endpoints"], view["services"]
        if kind == "add":
            i = draw(st.integers(50, 99))
            sid = draw(st.sampled_from(sorted(svcs)))
            net = draw(st.sampled_from(["n1", "n2", "n3"]))
            eps[f"x{i}"] = endpoint(f"x{i}", f"{svcs[sid]['name']}.{i}", sid,
                                    {net: f"10.0.{net[1]}.{i}"})
        elif kind == "remove" and eps:
            del eps[draw(st.sampled_from(sorted(eps)))]
        elif kind == "health" and eps:
            ep = eps[draw(st.sampled_from(sorted(eps)))]
            ep["healthy"] = not ep["healthy"]
            ep["state"] = draw(st.sampled_from(["running", "starting", "failed"]))
        elif kind == "alias":
            svcs["sweb"]["aliases"]["n1"] = draw(st.lists(st.sampled_from(["www", "web.1", "x"]),
                                                          max_size=2, unique=True))
        elif kind == "mode":
            svc = svcs[draw(st.sampled_from(sorted(svcs)))]
            svc["endpoint_mode"] = "dnsrr" if svc["endpoint_mode"] == "vip" else "vip"
        elif kind == "rename":
            view["networks"]["n2"]["name"] = draw(st.sampled_from(["backnet", "b2"]))
        elif kind == "vip":
            svcs["sdb"]["vips"]["n2"] = draw(st.sampled_from(["10.0.2.3", "10.0.2.9"]))
        elif kind == "move" and "tweb1" in eps:
            eps["tweb1"]["service_id"] = draw(st.sampled_from(["sweb", "sdb"]))
    return view


@settings(max_examples=300, deadline=None)
@given(edits())
def test_incremental_render_equals_a_fresh_one(new: nv.NodeView) -> None:
    t = tables(base_view())
    delta = nv.diff(base_view(), new)
    if delta is None:
        return
    t.apply_delta(copy.deepcopy(delta))
    assert _public(t) == _public(tables(new))


def test_a_second_snapshot_is_applied_as_a_difference() -> None:
    t = tables()
    before = t.nets["n1"]
    new = base_view()
    new["endpoints"]["trr3"] = endpoint("trr3", "rr.3", "srr", {"n1": "10.0.1.23"})
    t.set_view(new)
    assert t.nets["n1"] is before  # updated in place, not rendered anew
    assert addrs(ask(t, "client", "tasks.rr")) == ["10.0.1.21", "10.0.1.22", "10.0.1.23"]
    assert _public(t) == _public(tables(new))
