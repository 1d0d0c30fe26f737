"""Verifying certificates (other CA, expiry, revocation, cluster), the manager's admit/renew,
and role checks: each refusal names its reason."""

from datetime import UTC, datetime, timedelta

import pytest

from shoal import ca

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def auth():
    return ca.Authority.create("cluster1", allow_short=True)


def node(auth, node_id="n1", role="worker", **kw):
    return auth.issue_node_credentials(node_id, role, now=kw.pop("now", NOW), **kw)


def test_verify_returns_the_identity(auth):
    creds = node(auth, "n1", "manager")
    ident = auth.trust.verify(creds.cert, now=NOW + timedelta(days=1))
    assert (ident.node_id, ident.role, ident.cluster_id) == ("n1", ca.MANAGER, "cluster1")
    # DER bytes (what a TLS peer gives) verify the same, and again from the cache
    der = creds.cert.public_bytes(ca.pem.serialization.Encoding.DER)
    assert auth.trust.verify(der, now=NOW) == ident
    assert auth.trust.verify(der, now=NOW) == ident


def test_other_ca_refused(auth):
    other = ca.Authority.create("cluster1")  # even a CA claiming the same cluster id
    creds = node(other)
    with pytest.raises(ca.UnknownAuthority) as err:
        auth.trust.verify(creds.cert, now=NOW)
    assert "not by this cluster's CA" in str(err.value)
    assert err.value.status == 401


def test_cached_signature_does_not_cross_cas(auth):
    other = ca.Authority.create("cluster1")
    der = node(other).cert.public_bytes(ca.pem.serialization.Encoding.DER)
    other.trust.verify(der, now=NOW)
    with pytest.raises(ca.UnknownAuthority):
        auth.trust.verify(der, now=NOW)


def test_self_signed_leaf_refused(auth):
    other = ca.RootCA.create("cluster1")
    with pytest.raises(ca.UnknownAuthority):
        auth.trust.verify(other.cert, now=NOW)


def test_expiry_with_a_short_lifetime(auth):
    auth.set_lifetime(timedelta(seconds=2))
    creds = node(auth)
    assert auth.trust.verify(creds.cert, now=NOW + timedelta(seconds=1))
    assert auth.trust.verify(creds.cert, now=NOW + timedelta(seconds=2))  # inclusive
    with pytest.raises(ca.CertificateExpired) as err:
        auth.trust.verify(creds.cert, now=NOW + timedelta(seconds=3))
    msg = str(err.value)
    assert "node n1 (swarm-worker)" in msg and "expired at 2030-01-01 12:00:02Z (1s ago)" in msg
    assert "shoal join --token" in msg  # the documented way back
    assert auth.trust.verify(creds.cert, now=NOW + timedelta(days=400), allow_expired=True)


def test_expired_user_hint(auth):
    cert = auth.issue_user(ca.make_csr(ca.new_key()), "bob", ca.VIEWER, now=NOW)
    with pytest.raises(ca.CertificateExpired, match="user bob.*shoal user create"):
        auth.trust.verify(cert, now=NOW + timedelta(days=91))


def test_not_yet_valid(auth):
    creds = node(auth)
    with pytest.raises(ca.CertificateNotYetValid, match="clock"):
        auth.trust.verify(creds.cert, now=NOW - timedelta(hours=1))


def test_verify_uses_the_injected_clock(auth):
    creds = node(auth)
    trust = ca.Trust(auth.root.cert, clock=lambda: NOW + timedelta(days=100))
    with pytest.raises(ca.CertificateExpired):
        trust.verify(creds.cert)


def test_revoked_node(auth):
    old, new = node(auth, "n1"), node(auth, "n1")
    other = node(auth, "n2")
    auth.revoke_node("n1")
    for creds in (old, new):
        with pytest.raises(ca.CertificateRevoked) as err:
            auth.trust.verify(creds.cert, now=NOW)
        assert "node n1 (swarm-worker)" in str(err.value) and "node removed" in str(err.value)
    assert auth.trust.verify(other.cert, now=NOW).node_id == "n2"


def test_revoked_serial(auth):
    old, new = node(auth, "n1", "manager"), node(auth, "n1", "worker")
    auth.revoke_cert(old.cert, reason="demoted")
    with pytest.raises(ca.CertificateRevoked, match="demoted"):
        auth.trust.verify(old.cert, now=NOW)
    assert auth.trust.verify(new.cert, now=NOW).is_worker


def test_revoked_wins_over_expired(auth):
    creds = node(auth)
    auth.revoke_node("n1")
    with pytest.raises(ca.CertificateRevoked):
        auth.trust.verify(creds.cert, now=NOW + timedelta(days=365))


def test_revocation_round_trip_and_prune(auth):
    creds = node(auth, "n3")
    r = auth.revocations
    r.revoke_node("n1")
    r.revoke_node("n2", until=NOW, reason="gone")
    r.revoke_serial(creds.cert.serial_number, until=creds.cert.not_valid_after_utc)
    back = ca.Revocations.from_dict(r.to_dict())
    assert back == r
    back.prune(NOW + timedelta(days=1))
    assert set(back.subjects) == {"n1"}  # kept for good
    assert creds.cert.serial_number in back.serials
    back.prune(NOW + timedelta(days=91))
    assert not back.serials


def test_other_cluster_id_refused(auth):
    # Our signer always writes the CA's own O; a certificate naming another cluster can only
    # come from a CA whose O and leaves disagree. The check stands on its own anyway.
    cert = node(auth).cert
    trust = ca.Trust(auth.root.cert)
    trust.cluster_id = "cluster9"
    with pytest.raises(ca.NotAShoalCertificate, match="for cluster 'cluster1', this is "):
        trust.verify(cert, now=NOW)


# --- admit: the join ---


def test_admit_worker_and_manager(auth):
    w = auth.admit(auth.tokens.token("worker"), ca.make_csr(ca.new_key()), now=NOW)
    m = auth.admit(auth.tokens.token("manager"), ca.make_csr(ca.new_key()), now=NOW)
    assert (w.role, m.role) == (ca.WORKER, ca.MANAGER)
    assert len(w.node_id) == 25 and w.node_id != m.node_id and not w.rejoined
    assert auth.trust.verify(w.cert, now=NOW).node_id == w.node_id
    body = w.to_json()
    assert set(body) == {"node_id", "role", "cert", "ca"}
    assert ca.load_cert(body["ca"].encode()) == auth.root.cert


@pytest.mark.parametrize(("token", "error"), [
    ("nope", ca.MalformedToken),
    ("SWMTKN-1-" + "0" * 50 + "-" + "0" * 25, ca.WrongCA),
])
def test_admit_refuses_bad_tokens(auth, token, error):
    with pytest.raises(error):
        auth.admit(token, ca.make_csr(ca.new_key()))


def test_admit_refuses_a_rotated_token(auth):
    old = auth.tokens.token("worker")
    auth.tokens.rotate("worker")
    with pytest.raises(ca.TokenRefused):
        auth.admit(old, ca.make_csr(ca.new_key()))
    assert auth.admit(auth.tokens.token("worker"), ca.make_csr(ca.new_key())).role == ca.WORKER


def test_admit_refuses_a_bad_csr(auth):
    with pytest.raises(ca.MalformedRequest):
        auth.admit(auth.tokens.token("worker"), b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n")


def test_rejoin_after_expiry_keeps_the_node_id(auth):
    auth.set_lifetime(timedelta(hours=1))
    key = ca.new_key()
    first = auth.admit(auth.tokens.token("worker"), ca.make_csr(key), now=NOW)
    later = NOW + timedelta(days=30)
    with pytest.raises(ca.CertificateExpired):
        auth.trust.verify(first.cert, now=later)
    again = auth.admit(auth.tokens.token("worker"), ca.make_csr(key),
                       previous=ca.cert_pem(first.cert), now=later)
    assert again.node_id == first.node_id and again.rejoined
    assert auth.trust.verify(again.cert, now=later).node_id == first.node_id


def test_rejoin_needs_the_old_key(auth):
    first = auth.admit(auth.tokens.token("worker"), ca.make_csr(ca.new_key()), now=NOW)
    with pytest.raises(ca.CertificateRefused, match="old key"):
        auth.admit(auth.tokens.token("worker"), ca.make_csr(ca.new_key()),
                   previous=ca.cert_pem(first.cert), now=NOW)


def test_rejoin_refused_for_a_removed_node(auth):
    key = ca.new_key()
    first = auth.admit(auth.tokens.token("worker"), ca.make_csr(key), now=NOW)
    auth.revoke_node(first.node_id)
    with pytest.raises(ca.CertificateRevoked):
        auth.admit(auth.tokens.token("worker"), ca.make_csr(key),
                   previous=ca.cert_pem(first.cert), now=NOW)


def test_rejoin_refused_with_another_cas_cert(auth):
    other = ca.Authority.create("cluster1")
    key = ca.new_key()
    foreign = other.issue_node_credentials("victim", "manager", key=key, now=NOW)
    with pytest.raises(ca.UnknownAuthority):
        auth.admit(auth.tokens.token("worker"), ca.make_csr(key),
                   previous=ca.cert_pem(foreign.cert), now=NOW)


def test_rejoin_refused_with_a_user_cert(auth):
    key = ca.new_key()
    user = auth.issue_user(ca.make_csr(key), "alice", ca.ADMIN, now=NOW)
    with pytest.raises(ca.CertificateRefused, match="not of a node"):
        auth.admit(auth.tokens.token("worker"), ca.make_csr(key), previous=ca.cert_pem(user),
                   now=NOW)


# --- renew ---


def test_renew_keeps_the_id_and_takes_the_role_given(auth):
    creds = node(auth, "n1", "worker")
    ident = auth.trust.verify(creds.cert, now=NOW)
    same = auth.renew(ident, ca.make_csr(ca.new_key()), now=NOW)
    assert ca.identity_of(same).node_id == "n1" and ca.identity_of(same).is_worker
    promoted = auth.renew(ident, ca.make_csr(ca.new_key()), role="manager", now=NOW)
    assert ca.identity_of(promoted).is_manager
    with pytest.raises(ca.MalformedRequest):
        auth.renew(ident, ca.make_csr(ca.new_key()), role="admin")


def test_users_cannot_renew_as_nodes(auth):
    user = ca.identity_of(auth.issue_user(ca.make_csr(ca.new_key()), "bob", ca.ADMIN))
    with pytest.raises(ca.PermissionDenied):
        auth.renew(user, ca.make_csr(ca.new_key()))


def test_lifetime_policy_of_the_authority():
    with pytest.raises(ca.InvalidLifetime):
        ca.Authority.create("c1", node_lifetime=timedelta(minutes=5))
    auth = ca.Authority.create("c1")
    with pytest.raises(ca.InvalidLifetime):
        auth.set_lifetime(timedelta(seconds=30))
    auth.set_lifetime(timedelta(days=7))
    cert = node(auth).cert
    assert cert.not_valid_after_utc == NOW + timedelta(days=7)


def test_tokens_of_another_ca_refused():
    a, b = ca.Authority.create("c1"), ca.Authority.create("c1")
    with pytest.raises(ca.MalformedRequest):
        ca.Authority(a.root, b.tokens)


def test_replacing_revocations_takes_effect(auth):
    creds = node(auth, "n1")
    loaded = ca.Revocations.from_dict({"Nodes": [{"ID": "n1", "Reason": "node removed"}]})
    auth.set_revocations(loaded)
    with pytest.raises(ca.CertificateRevoked, match="node removed"):
        auth.trust.verify(creds.cert, now=NOW)
