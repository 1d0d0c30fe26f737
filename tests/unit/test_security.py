"""The manager's side of the cluster CA (shoal.manager.security), RBAC (shoal.api.access) and
the audit log, without a lab: what is persisted, what is refused, who may call what."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from shoal import ca
from shoal.api.access import ADMIN, OPERATOR, VIEWER, required_role
from shoal.cli.cluster import parse_duration
from shoal.errors import Conflict, InvalidArgument, NotFound
from shoal.manager.audit import AuditLog
from shoal.manager.security import ClusterSecurity, init_cluster
from shoal.store import SQLiteStore

ADVERTISE = "198.18.0.11:2377"


@pytest.fixture
def security(tmp_path):
    store = SQLiteStore(tmp_path / "store.db")
    init_cluster(store, tmp_path, ADVERTISE, hostname="node1")
    yield ClusterSecurity.load(store, tmp_path, ADVERTISE)
    store.close()


def joined(security, role="worker", peer="198.18.0.12"):
    key = ca.new_key()
    answer = security.join({"token": security.authority.tokens.token(role),
                            "csr": ca.make_csr(key).decode()}, peer)
    return answer, ca.NodeCredentials(key, ca.load_cert(answer["cert"].encode()),
                                      security.authority.root.cert)


# --- init ---


def test_init_makes_the_ca_the_tokens_and_the_first_manager(tmp_path):
    store = SQLiteStore(tmp_path / "store.db")
    cluster, made = init_cluster(store, tmp_path, ADVERTISE, hostname="node1",
                                 agent_state_dir=tmp_path / "agent")
    assert made
    root = ca.RootCA.load(tmp_path / "ca")
    assert cluster["TLSInfo"]["TrustRoot"] == root.cert_pem.decode()
    assert ca.JoinToken.parse(cluster["JoinTokens"]["Worker"]).ca_digest == root.digest
    (node,) = store.list("node")
    assert node["Spec"]["Role"] == "manager" and node["Description"]["Hostname"] == "node1"
    for d in (tmp_path / "tls", tmp_path / "agent" / "tls"):
        ident = ca.NodeCredentials.load(d).check()
        assert ident.name == node["ID"] and ident.is_manager
    # Idempotent: a second init changes nothing.
    again, made = init_cluster(store, tmp_path, ADVERTISE, hostname="node1")
    assert not made and again["JoinTokens"] == cluster["JoinTokens"]
    assert len(store.list("node")) == 1
    store.close()


def test_a_manager_without_init_says_how(tmp_path):
    store = SQLiteStore(tmp_path / "store.db")
    with pytest.raises(ca.CAStoreError, match="shoal init"):
        ClusterSecurity.load(store, tmp_path, ADVERTISE)
    store.close()


# --- join, renew, remove ---


def test_join_records_the_node_down_until_its_agent_connects(security):
    answer, creds = joined(security)
    node = security.store.get("node", answer["node_id"])
    assert node["Spec"]["Role"] == "worker" and node["Status"]["State"] == "down"
    assert creds.identity.role == ca.WORKER
    answer, _ = joined(security, role="manager")
    assert security.store.get("node", answer["node_id"])["Spec"]["Role"] == "manager"


@pytest.mark.parametrize("body", [None, [], {"token": "x"}, {"csr": "x"},
                                  {"token": 1, "csr": "x"}])
def test_malformed_join_requests_change_nothing(security, body):
    before = len(security.store.list("node"))
    with pytest.raises(InvalidArgument):
        security.join(body, "198.18.0.12")
    assert len(security.store.list("node")) == before


def test_wrong_and_rotated_tokens_change_nothing(security, tmp_path):
    old = security.authority.tokens.token("worker")
    security.rotate_token("worker")
    before = len(security.store.list("node"))
    with pytest.raises(ca.TokenRefused, match="rotated"):
        security.join({"token": old, "csr": ca.make_csr(ca.new_key()).decode()}, "x")
    assert len(security.store.list("node")) == before
    # The rotation is in the store: a restarted manager refuses the old token too.
    again = ClusterSecurity.load(security.store, tmp_path, ADVERTISE)
    with pytest.raises(ca.TokenRefused):
        again.authority.tokens.role_for(old)


def test_renewal_follows_the_role_the_store_has(security):
    answer, creds = joined(security)
    node = security.store.get("node", answer["node_id"])
    security.update_node(node["ID"], node["Version"]["Index"], {**node["Spec"],
                                                                 "Role": "manager"})
    cert = security.renew(creds.identity, {"csr": ca.make_csr(ca.new_key()).decode()})["cert"]
    assert ca.identity_of(ca.load_cert(cert.encode())).role == ca.MANAGER


def test_effective_role_is_the_lower_of_certificate_and_store(security):
    answer, creds = joined(security, role="manager")
    assert security.effective_role(creds.identity) == "manager"
    node = security.store.get("node", answer["node_id"])
    security.update_node(node["ID"], node["Version"]["Index"], {**node["Spec"],
                                                                 "Role": "worker"})
    # Demoted: its manager certificate acts as a worker's before it is reissued.
    assert security.effective_role(creds.identity) == "worker"


def test_remove_revokes_every_certificate_of_the_node(security, tmp_path):
    answer, creds = joined(security)
    dropped = []
    security.on_revoke = dropped.append
    security.remove_node(answer["node_id"], force=False)
    assert dropped == [answer["node_id"]]
    assert security.store.get("node", answer["node_id"]) is None
    with pytest.raises(ca.CertificateRevoked):
        security.trust.verify(creds.cert)
    with pytest.raises(ca.CertificateRevoked):
        security.renew(creds.identity, {"csr": ca.make_csr(ca.new_key()).decode()})
    # Kept in the store: a restarted manager still refuses it.
    again = ClusterSecurity.load(security.store, tmp_path, ADVERTISE)
    with pytest.raises(ca.CertificateRevoked):
        again.trust.verify(creds.cert)


def test_remove_refuses_managers_ready_nodes_and_unknown_ones(security):
    manager = security.store.list("node")[0]
    with pytest.raises(Conflict, match="demote"):
        security.remove_node(manager["ID"], force=True)
    answer, _ = joined(security)
    node = security.store.get("node", answer["node_id"])
    node["Status"]["State"] = "ready"
    with security.store.tx() as tx:
        tx.update("node", node)
    with pytest.raises(Conflict, match="--force"):
        security.remove_node(answer["node_id"], force=False)
    with pytest.raises(NotFound):
        security.remove_node("nosuchnode", force=True)


def test_node_updates_check_version_role_and_the_last_manager(security):
    manager = security.store.list("node")[0]
    with pytest.raises(Conflict, match="out of sequence"):
        security.update_node(manager["ID"], 999, manager["Spec"])
    with pytest.raises(InvalidArgument):
        security.update_node(manager["ID"], manager["Version"]["Index"],
                             {**manager["Spec"], "Role": "king"})
    with pytest.raises(Conflict, match="last manager"):
        security.update_node(manager["ID"], manager["Version"]["Index"],
                             {**manager["Spec"], "Role": "worker"})


def test_cert_expiry_is_stored_and_checked(security, tmp_path):
    security.set_cert_expiry(int(2 * 3600 * 1e9))
    again = ClusterSecurity.load(security.store, tmp_path, ADVERTISE)
    assert again.authority.node_lifetime == timedelta(hours=2)
    with pytest.raises(ca.InvalidLifetime):
        security.set_cert_expiry(int(60 * 1e9))


def test_user_certificates_carry_their_role(security):
    answer = security.issue_user({"name": "alice", "role": "operator",
                                  "csr": ca.make_csr(ca.new_key()).decode()})
    ident = security.trust.verify(ca.load_cert(answer["cert"].encode()))
    assert ident.is_user and ident.role == "operator" and ident.name == "alice"
    with pytest.raises(InvalidArgument, match="unknown role"):
        security.issue_user({"name": "bob", "role": "root",
                             "csr": ca.make_csr(ca.new_key()).decode()})


# --- RBAC table ---


@pytest.mark.parametrize("method,route,role", [
    ("GET", "services", VIEWER),
    ("HEAD", "_ping", VIEWER),
    ("GET", "services/{id}/logs", VIEWER),
    ("POST", "services/create", OPERATOR),
    ("POST", "services/{id}/update", OPERATOR),
    ("DELETE", "services/{id}", OPERATOR),
    ("POST", "networks/create", OPERATOR),
    ("DELETE", "networks/{id}", OPERATOR),
    ("POST", "nodes/{id}/update", ADMIN),
    ("DELETE", "nodes/{id}", ADMIN),
    ("POST", "swarm/update", ADMIN),
    ("POST", "/shoal/v1/users", ADMIN),
    ("GET", "/shoal/v1/audit", ADMIN),
    ("POST", "somethingnew", ADMIN),  # default deny: unknown changes need the top role
    ("GET", "/shoal/v1/ca", None),
    ("POST", "/shoal/v1/join", None),
    ("GET", "/shoal/v1/session", None),
    ("POST", "/shoal/v1/renew", None),
])
def test_the_role_each_call_needs(method, route, role):
    assert required_role(method, route) == role


# --- audit ---


def test_audit_log_appends_and_survives_a_torn_line(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    log.record("alice", "operator", "198.18.0.12", "POST", "/services/create", 201,
               target="web")
    log.record("bob", "viewer", "198.18.0.12", "DELETE", "/services/web", 403, "no")
    with open(tmp_path / "audit.log", "ab") as f:
        f.write(b'{"Time": "2026-')  # a crash mid-write
    log.close()
    again = AuditLog(tmp_path / "audit.log")
    entries = again.read()
    assert [(e["User"], e["Outcome"]) for e in entries] == [("alice", "allowed"),
                                                            ("bob", "denied")]
    assert again.read(user="bob")[0]["Message"] == "no"
    assert json.loads((tmp_path / "audit.log").read_text().splitlines()[0])["Target"] == "web"
    assert (tmp_path / "audit.log").stat().st_mode & 0o077 == 0
    again.close()


@pytest.mark.parametrize("text,seconds", [("2160h", 2160 * 3600), ("1h30m", 5400),
                                          ("90s", 90), ("8s", 8), ("1d", 86400)])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "10", "h", "1x", "1h 2m", "-1h"])
def test_bad_durations(text):
    with pytest.raises(InvalidArgument):
        parse_duration(text)


def test_removing_a_user_revokes_its_certificates_and_pruning_forgets_expired_ones(
        security, tmp_path):
    csr = ca.make_csr(ca.new_key()).decode()
    first = security.issue_user({"name": "alice", "role": "viewer", "csr": csr})
    second = security.issue_user({"name": "alice", "role": "admin", "csr": csr})
    security.issue_user({"name": "bob", "role": "viewer", "csr": csr})
    assert [u["Name"] for u in security.users()] == ["alice", "alice", "bob"]
    assert security.remove_user("alice") == 2
    for answer in (first, second):
        with pytest.raises(ca.CertificateRevoked, match="user alice removed"):
            security.trust.verify(ca.load_cert(answer["cert"].encode()))
    assert [u["Name"] for u in security.users()] == ["bob"]
    with pytest.raises(NotFound):
        security.remove_user("alice")
    # Stored: a restarted manager refuses them too.
    again = ClusterSecurity.load(security.store, tmp_path, ADVERTISE)
    with pytest.raises(ca.CertificateRevoked):
        again.trust.verify(ca.load_cert(first["cert"].encode()))
    # Once expired, neither the revocations nor the user records are needed.
    cluster = security.store.list("cluster")[0]
    expired = {**cluster, "ShoalUsers": [{**u, "NotAfter": "2020-01-01T00:00:00+00:00"}
                                         for u in cluster["ShoalUsers"]]}
    with security.store.tx() as tx:
        tx.update("cluster", expired)
    for serial in list(security.authority.revocations.serials):
        security.authority.revocations.serials[serial] = datetime(2020, 1, 1, tzinfo=UTC)
    security.prune()
    assert security.users() == [] and not security.authority.revocations.serials
