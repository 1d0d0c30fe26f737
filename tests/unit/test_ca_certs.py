"""The root CA on disk and the certificates it signs: subjects, names, lifetimes, files."""

import ipaddress
import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal import ca
from shoal.ca import pem

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def root():
    return ca.RootCA.create("cluster1")


def attr(cert, oid):
    return [a.value for a in cert.subject.get_attributes_for_oid(oid)]


def sans(cert):
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), ext.get_values_for_type(x509.IPAddress)


def test_root_ca(root):
    cert = root.cert
    assert attr(cert, NameOID.COMMON_NAME) == ["shoal-root-ca"]
    assert attr(cert, NameOID.ORGANIZATION_NAME) == ["cluster1"]
    assert cert.issuer == cert.subject
    assert isinstance(root.key, ec.EllipticCurvePrivateKey)
    assert isinstance(root.key.curve, ec.SECP256R1)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    cert.verify_directly_issued_by(cert)
    assert root.cluster_id == "cluster1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > timedelta(days=19 * 365)


def test_digest_is_sha256_of_der(root):
    der = root.cert.public_bytes(serialization.Encoding.DER)
    h = hashes.Hash(hashes.SHA256())
    h.update(der)
    assert root.digest == h.finalize().hex() == ca.ca_digest(root.cert)
    assert len(root.digest) == 64


def test_bad_cluster_id():
    with pytest.raises(ca.MalformedRequest):
        ca.RootCA.create("Not/An Id")


def test_tls_info_in_dockers_shape(root):
    info = root.tls_info()
    assert set(info) == {"TrustRoot", "CertIssuerSubject", "CertIssuerPublicKey"}
    assert info["TrustRoot"].startswith("-----BEGIN CERTIFICATE-----")


# --- on disk ---


def test_save_and_load(root, tmp_path):
    d = tmp_path / "ca"
    root.save(d)
    assert stat.S_IMODE((d / "root.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "root.crt").stat().st_mode) == 0o644
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    back = ca.RootCA.load(d)
    assert back.cert == root.cert and back.digest == root.digest
    assert back.key.private_numbers() == root.key.private_numbers()
    assert not list(d.glob(".*tmp"))  # no temporary file left behind


def test_key_is_0600_even_with_a_permissive_umask(root, tmp_path):
    old = os.umask(0)
    try:
        root.save(tmp_path / "ca")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ca" / "root.key").stat().st_mode) == 0o600


def test_load_missing(tmp_path):
    with pytest.raises(ca.CAStoreError, match="shoal init"):
        ca.RootCA.load(tmp_path / "nothing")


def test_load_refuses_a_readable_key(root, tmp_path):
    root.save(tmp_path)
    os.chmod(tmp_path / "root.key", 0o644)
    with pytest.raises(ca.CAStoreError, match="readable by others .*0644"):
        ca.RootCA.load(tmp_path)


def test_load_refuses_a_key_of_another_cert(root, tmp_path):
    root.save(tmp_path)
    other = ca.RootCA.create("cluster2")
    (tmp_path / "root.crt").write_bytes(other.cert_pem)
    with pytest.raises(ca.CAStoreError, match="not the key of"):
        ca.RootCA.load(tmp_path)


def test_load_refuses_garbage(root, tmp_path):
    root.save(tmp_path)
    (tmp_path / "root.crt").write_text("not a cert")
    with pytest.raises(ca.CAError):
        ca.RootCA.load(tmp_path)


# --- node certificates ---


def test_node_certificate(root):
    key = ca.new_key()
    cert = root.sign_node(ca.make_csr(key), "node1abc", ca.MANAGER, addrs=["198.18.0.11"],
                          now=NOW)
    assert attr(cert, NameOID.COMMON_NAME) == ["node1abc"]
    assert attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["swarm-manager"]
    assert attr(cert, NameOID.ORGANIZATION_NAME) == ["cluster1"]
    assert cert.issuer == root.cert.subject
    cert.verify_directly_issued_by(root.cert)
    assert cert.public_key() == key.public_key()
    dns, ips = sans(cert)
    assert dns == ["swarm-manager", "node1abc"]
    assert ips == [ipaddress.ip_address("198.18.0.11")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # default lifetime: 90 days from issue, backdated 5 minutes for clock skew
    assert cert.not_valid_after_utc == NOW + timedelta(days=90)
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    ident = ca.identity_of(cert)
    assert (ident.node_id, ident.role, ident.cluster_id) == ("node1abc", ca.MANAGER, "cluster1")
    assert ident.is_manager and ident.is_node and not ident.is_user
    assert ident.spec_role == "manager"


def test_worker_certificate(root):
    cert = root.sign_node(ca.make_csr(ca.new_key()), "w1", "swarm-worker")
    ident = ca.identity_of(cert)
    assert ident.is_worker and ident.spec_role == "worker"
    assert sans(cert) == (["swarm-worker", "w1"], [])


def test_csr_subject_and_extensions_are_ignored(root):
    key = ca.new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil"),
                                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                       "swarm-manager")]))
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("swarm-manager")]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    cert = root.sign_node(csr, "w2", ca.WORKER)
    assert attr(cert, NameOID.COMMON_NAME) == ["w2"]
    assert ca.identity_of(cert).role == ca.WORKER
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "swarm-manager" not in sans(cert)[0]


def test_bad_csrs_refused(root):
    with pytest.raises(ca.MalformedRequest, match="not a PEM certificate signing request"):
        root.sign_node(b"garbage", "n1", ca.WORKER)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
               .sign(rsa_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ca.MalformedRequest, match="ECDSA P-256"):
        root.sign_node(rsa_csr, "n1", ca.WORKER)
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ca.MalformedRequest, match="ECDSA P-256"):
        root.sign_node(ca.make_csr(p384), "n1", ca.WORKER)
    with pytest.raises(ca.MalformedRequest, match="too large"):
        root.sign_node(b"x" * (pem.MAX_PEM + 1), "n1", ca.WORKER)


def test_tampered_csr_refused(root):
    csr = bytearray(x509.load_pem_x509_csr(ca.make_csr(ca.new_key(), "n1")).public_bytes(
        serialization.Encoding.DER))
    csr[-5] ^= 0x01  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(csr))
    with pytest.raises(ca.MalformedRequest, match="signature"):
        root.sign_node(tampered.public_bytes(serialization.Encoding.PEM), "n1", ca.WORKER)


@pytest.mark.parametrize(("node_id", "role"), [("n1", "manager"), ("n1", "admin"),
                                               ("N1", ca.WORKER), ("n 1", ca.WORKER),
                                               ("", ca.WORKER)])
def test_bad_node_id_or_role(root, node_id, role):
    with pytest.raises(ca.MalformedRequest):
        root.sign_node(ca.make_csr(ca.new_key()), node_id, role)


# --- lifetimes ---


def test_lifetime_configurable(root):
    cert = root.sign_node(ca.make_csr(ca.new_key()), "n1", ca.WORKER,
                          lifetime=timedelta(hours=1), now=NOW)
    assert cert.not_valid_after_utc == NOW + timedelta(hours=1)


def test_lifetime_minimum_one_hour(root, monkeypatch):
    monkeypatch.delenv(ca.SHORT_LIFETIME_ENV, raising=False)
    with pytest.raises(ca.InvalidLifetime, match=r"below the minimum 1:00:00.*SHOAL_TEST"):
        root.sign_node(ca.make_csr(ca.new_key()), "n1", ca.WORKER,
                       lifetime=timedelta(minutes=59))


def test_short_lifetime_with_explicit_override(root):
    cert = root.sign_node(ca.make_csr(ca.new_key()), "n1", ca.WORKER,
                          lifetime=timedelta(seconds=2), allow_short=True, now=NOW)
    assert cert.not_valid_before_utc == NOW  # a test certificate is not backdated
    assert cert.not_valid_after_utc == NOW + timedelta(seconds=2)


def test_short_lifetime_with_env_override(root, monkeypatch):
    monkeypatch.setenv(ca.SHORT_LIFETIME_ENV, "1")
    cert = root.sign_node(ca.make_csr(ca.new_key()), "n1", ca.WORKER,
                          lifetime=timedelta(seconds=5))
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(seconds=5)


def test_not_below_one_second_even_with_override(root):
    with pytest.raises(ca.InvalidLifetime, match="below the minimum 0:00:01"):
        root.sign_node(ca.make_csr(ca.new_key()), "n1", ca.WORKER,
                       lifetime=timedelta(milliseconds=500), allow_short=True)


def test_lifetime_clamped_to_the_ca(root):
    short_ca = ca.RootCA.create("c2", lifetime=timedelta(days=10))
    cert = short_ca.sign_node(ca.make_csr(ca.new_key()), "n1", ca.WORKER)
    assert cert.not_valid_after_utc == short_ca.cert.not_valid_after_utc


# --- user certificates ---


@pytest.mark.parametrize("role", [ca.VIEWER, ca.OPERATOR, ca.ADMIN])
def test_user_certificate(root, role):
    cert = root.sign_user(ca.make_csr(ca.new_key()), "alice.smith", role)
    ident = ca.identity_of(cert)
    assert (ident.name, ident.role, ident.cluster_id) == ("alice.smith", role, "cluster1")
    assert ident.is_user and not ident.is_node
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # can never serve as a manager
    with pytest.raises(ca.NotAShoalCertificate):
        ident.node_id  # noqa: B018


@pytest.mark.parametrize(("name", "role"), [("alice", "swarm-manager"), ("alice", "root"),
                                            ("-alice", ca.ADMIN), ("al ice", ca.ADMIN),
                                            ("a" * 65, ca.ADMIN), ("", ca.VIEWER)])
def test_bad_user(root, name, role):
    with pytest.raises(ca.MalformedRequest):
        root.sign_user(ca.make_csr(ca.new_key()), name, role)


# --- identity_of ---


def test_identity_of_refuses_foreign_subjects(root):
    key = ca.new_key()

    def cert_with(name):
        return (x509.CertificateBuilder().subject_name(name).issuer_name(root.cert.subject)
                .public_key(key.public_key()).serial_number(1)
                .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
                .sign(root.key, hashes.SHA256()))

    cn = x509.NameAttribute(NameOID.COMMON_NAME, "n1")
    o = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster1")
    with pytest.raises(ca.NotAShoalCertificate, match="0 OU"):
        ca.identity_of(cert_with(x509.Name([o, cn])))
    bad_ou = x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "swarm-superuser")
    with pytest.raises(ca.NotAShoalCertificate, match="swarm-superuser"):
        ca.identity_of(cert_with(x509.Name([o, bad_ou, cn])))
    ou = x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "swarm-worker")
    with pytest.raises(ca.NotAShoalCertificate, match="2 CN"):
        ca.identity_of(cert_with(x509.Name([o, ou, cn, cn])))


# --- node credentials on disk ---


def test_node_credentials_save_load(tmp_path):
    auth = ca.Authority.create("cluster1")
    creds = auth.issue_node_credentials("n1", "worker")
    creds.save(tmp_path / "tls")
    node_pem = tmp_path / "tls" / "node.pem"
    assert stat.S_IMODE(node_pem.stat().st_mode) == 0o600
    text = node_pem.read_text()
    assert "PRIVATE KEY" in text and "CERTIFICATE" in text  # one file: one atomic rename
    back = ca.NodeCredentials.load(tmp_path / "tls")
    assert back.cert == creds.cert and back.ca_cert == creds.ca_cert
    assert back.identity.node_id == "n1"
    assert ca.NodeCredentials.exists(tmp_path / "tls")


def test_node_credentials_missing_or_open(tmp_path):
    with pytest.raises(ca.CAStoreError, match="not joined"):
        ca.NodeCredentials.load(tmp_path)
    auth = ca.Authority.create("cluster1")
    auth.issue_node_credentials("n1", "worker").save(tmp_path)
    os.chmod(tmp_path / "node.pem", 0o640)
    with pytest.raises(ca.CAStoreError, match="readable by others"):
        ca.NodeCredentials.load(tmp_path)


def test_node_credentials_refuse_a_foreign_key():
    auth = ca.Authority.create("cluster1")
    creds = auth.issue_node_credentials("n1", "worker")
    with pytest.raises(ca.CAStoreError, match="not the key"):
        ca.NodeCredentials(ca.new_key(), creds.cert, creds.ca_cert)
