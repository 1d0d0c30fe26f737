"""Routing tables: parsing, normalisation, round-robin, and building them from labels."""

import pytest

from shoal.mesh.errors import InvalidRoutes
from shoal.mesh.routes import (
    Route,
    ServiceRoutes,
    lookup,
    normalize_host,
    parse_addr,
    parse_routes,
    routes_from_services,
)


def test_parse_routes():
    t = parse_routes({"http": {"App.Example.org.": ["10.255.0.5:80", "10.255.0.7:80",
                                                    "10.255.0.5:80"]},
                      "https": {"s.test": ["[fd00::1]:443"]}})
    assert t.http["app.example.org"].backends == (("10.255.0.5", 80), ("10.255.0.7", 80))
    assert t.https["s.test"].backends == (("fd00::1", 443),)
    assert t.to_json() == {"http": {"app.example.org": ["10.255.0.5:80", "10.255.0.7:80"]},
                           "https": {"s.test": ["[fd00::1]:443"]}}
    assert parse_routes({"http": {"empty.test": []}}).http == {}


@pytest.mark.parametrize("doc", [
    [], {"http": []}, {"other": {}}, {"http": {"a b": ["1.2.3.4:80"]}},
    {"http": {"a": "1.2.3.4:80"}}, {"http": {"a": ["1.2.3.4"]}}, {"http": {"a": ["x:80"]}},
    {"http": {"a": ["1.2.3.4:0"]}}, {"http": {"a": ["fd00::1:80"]}},
    {"http": {"a.test": ["1.2.3.4:80"], "A.test.": ["1.2.3.4:81"]}},
    {"http": {"a.*.test": ["1.2.3.4:80"]}}, {"http": {"*": ["1.2.3.4:80"]}},
])
def test_bad_routes(doc):
    with pytest.raises(InvalidRoutes):
        parse_routes(doc)


def test_parse_addr():
    assert parse_addr("10.0.0.1:8080") == ("10.0.0.1", 8080)
    assert parse_addr("[::1]:80") == ("::1", 80)


def test_round_robin_and_failover_order():
    r = Route((("a", 1), ("b", 1), ("c", 1)))
    firsts = [r.pick() for _ in range(6)]
    assert firsts == [0, 1, 2, 0, 1, 2]
    assert r.order(1) == [("b", 1), ("c", 1), ("a", 1)]


def test_wildcard_lookup():
    t = parse_routes({"http": {"*.apps.test": ["1.1.1.1:80"], "x.apps.test": ["2.2.2.2:80"]}})
    assert lookup(t.http, "x.apps.test").backends == (("2.2.2.2", 80),)
    assert lookup(t.http, "y.apps.test").backends == (("1.1.1.1", 80),)
    assert lookup(t.http, "a.y.apps.test") is None
    assert lookup(t.http, "apps.test") is None


@pytest.mark.parametrize("raw,key", [
    (b"a.test", "a.test"), (b"A.Test.:80", "a.test"), (b"[::1]:8", "[::1]"),
    (b"a.test:x", None), (b"a.test:123456", None), (b"", None), (b"\xff", None),
    (b"[zz]", None), (b"a/b", None), (b".a", None), (b"a.test:80:80", None),
])
def test_normalize_host(raw, key):
    assert normalize_host(raw) == key


def test_routes_from_services():
    table, problems = routes_from_services([
        ServiceRoutes("web", {"shoal.http.host": "app.test, www.app.test"},
                      ("10.255.0.5", "10.255.0.7")),
        ServiceRoutes("api", {"shoal.http.host": "api.test", "shoal.http.port": "8080",
                              "shoal.https.port": "8443"}, ("10.255.0.9",)),
        ServiceRoutes("tls", {"shoal.https.host": "secure.test"}, ("10.255.0.11",)),
        ServiceRoutes("dup", {"shoal.http.host": "APP.test"}, ("10.255.0.99",)),
        ServiceRoutes("bad", {"shoal.http.host": "x.test", "shoal.http.port": "http"}, ()),
        ServiceRoutes("plain", {"other": "label"}, ("10.255.0.1",)),
    ])
    assert table == {
        "http": {"app.test": ["10.255.0.5:80", "10.255.0.7:80"],
                 "www.app.test": ["10.255.0.5:80", "10.255.0.7:80"],
                 "api.test": ["10.255.0.9:8080"]},
        "https": {"api.test": ["10.255.0.9:8443"], "secure.test": ["10.255.0.11:443"]},
    }
    assert len(problems) == 2
    assert "app.test claimed by web and dup" in problems[0] and "port" in problems[1]
    parse_routes(table)  # what it builds, the mesh takes
