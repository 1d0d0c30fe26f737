"""The cluster's root CA: an ECDSA P-256 key and a self-signed certificate, and the signing of
node and user certificates from their CSRs.

On disk, in one directory (0700): `root.key` (PKCS#8 PEM, 0600) and `root.crt` (PEM, 0644).
The CSR contributes only its public key: subject, roles and names come from the manager's
arguments, never from what the requester wrote into the CSR (as swarmkit's signer does).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.ca import pem
from shoal.ca.errors import CAStoreError, InvalidLifetime, MalformedRequest
from shoal.ca.identity import NODE_ID_RE, USER_NAME_RE
from shoal.ca.keys import new_key
from shoal.ca.names import (
    CLOCK_SKEW,
    DEFAULT_LIFETIME,
    MIN_LIFETIME,
    MIN_TEST_LIFETIME,
    NODE_ROLES,
    ROOT_CN,
    ROOT_LIFETIME,
    SHORT_LIFETIME_ENV,
    USER_ROLES,
)

KEY_FILE = "root.key"
CERT_FILE = "root.crt"


def utcnow() -> datetime:
    return datetime.now(UTC)


def _second(t: datetime) -> datetime:
    """X.509 times have whole seconds; cut here so that what we compute is what gets signed."""
    return t.replace(microsecond=0)


def ca_digest(cert: x509.Certificate) -> str:
    """sha256 of the certificate's DER, hex. DER (not PEM, which Docker hashes) because it is
    the one canonical encoding: the same certificate always has the same digest."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def check_lifetime(lifetime: timedelta, allow_short: bool = False) -> timedelta:
    """`lifetime` if allowed. Below MIN_LIFETIME only with allow_short=True or the
    SHOAL_TEST_SHORT_CERTS=1 environment variable (tests), and never below one second."""
    short_ok = allow_short or os.environ.get(SHORT_LIFETIME_ENV) == "1"
    floor = MIN_TEST_LIFETIME if short_ok else MIN_LIFETIME
    if lifetime < floor:
        hint = "" if short_ok else f" (tests may go lower with {SHORT_LIFETIME_ENV}=1)"
        raise InvalidLifetime(f"certificate lifetime {lifetime} is below the minimum "
                              f"{floor}{hint}")
    return lifetime


def _name(cn: str, ou: str | None, org: str) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    if ou is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _sans(names: Iterable[str], addrs: Iterable[str]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names)]
    for addr in dict.fromkeys(addrs):
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(addr)))
        except ValueError:
            try:
                general.append(x509.DNSName(addr.encode("idna").decode()))
            except UnicodeError as exc:
                raise MalformedRequest(f"address {addr!r} is neither an IP nor a DNS "
                                       "name") from exc
    return x509.SubjectAlternativeName(general)


@dataclass(frozen=True)
class RootCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    # --- making, saving, loading ---

    @classmethod
    def create(cls, cluster_id: str, *, lifetime: timedelta = ROOT_LIFETIME,
               now: datetime | None = None) -> RootCA:
        if not NODE_ID_RE.fullmatch(cluster_id):
            raise MalformedRequest(f"cluster id {cluster_id!r}: expected 1-64 of [a-z0-9]")
        key = new_key()
        start = _second(now or utcnow())
        name = _name(ROOT_CN, None, cluster_id)
        pub = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - CLOCK_SKEW).not_valid_after(start + lifetime)
            # path_length=0: this CA signs leaves only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def save(self, directory: str | os.PathLike[str]) -> None:
        d = Path(directory)
        pem.private_dir(d)
        pem.write_file(d / KEY_FILE, pem.key_pem(self.key), 0o600)
        pem.write_file(d / CERT_FILE, pem.cert_pem(self.cert), 0o644)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> RootCA:
        d = Path(directory)
        if not (d / KEY_FILE).exists() or not (d / CERT_FILE).exists():
            raise CAStoreError(f"no cluster CA in {d}: expected {KEY_FILE} and {CERT_FILE} "
                               "(`shoal init` creates them)")
        pem.check_private(d / KEY_FILE)
        cert = pem.load_cert(d / CERT_FILE, f"CA certificate {d / CERT_FILE}")
        key = pem.load_key(d / KEY_FILE, f"CA key {d / KEY_FILE}")
        if key.public_key() != cert.public_key():
            raise CAStoreError(f"{d / KEY_FILE} is not the key of {d / CERT_FILE}")
        ca = cls(cert, key)
        ca.cluster_id  # noqa: B018 - refuse a certificate without our subject now, not later
        return ca

    # --- what others need to know ---

    @property
    def cluster_id(self) -> str:
        orgs = self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if len(orgs) != 1:
            raise CAStoreError("the CA certificate has no single O (cluster id)")
        return str(orgs[0].value)

    @property
    def digest(self) -> str:
        return ca_digest(self.cert)

    @property
    def cert_pem(self) -> bytes:
        return pem.cert_pem(self.cert)

    def tls_info(self) -> dict[str, str]:
        """The Cluster object's TLSInfo, in Docker's shape."""
        return {
            "TrustRoot": self.cert_pem.decode(),
            "CertIssuerSubject": base64.b64encode(self.cert.subject.public_bytes()).decode(),
            "CertIssuerPublicKey": base64.b64encode(self.cert.public_key().public_bytes(
                serialization.Encoding.DER,
                serialization.PublicFormat.SubjectPublicKeyInfo)).decode(),
        }

    # --- signing ---

    def sign_node(self, csr: bytes | str | x509.CertificateSigningRequest, node_id: str,
                  role: str, *, addrs: Iterable[str] = (),
                  lifetime: timedelta = DEFAULT_LIFETIME, allow_short: bool = False,
                  now: datetime | None = None) -> x509.Certificate:
        """A node certificate: CN node id, OU role, O cluster id; SAN DNS role and node id
        (plus `addrs`, IPs or DNS names: give a manager the addresses clients dial)."""
        if role not in NODE_ROLES:
            raise MalformedRequest(f"node role {role!r}: expected one of {', '.join(NODE_ROLES)}")
        if not NODE_ID_RE.fullmatch(node_id):
            raise MalformedRequest(f"node id {node_id!r}: expected 1-64 of [a-z0-9]")
        return self._sign(csr, node_id, role, _sans([role, node_id], addrs),
                          [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                          lifetime, allow_short, now)

    def sign_user(self, csr: bytes | str | x509.CertificateSigningRequest, name: str,
                  role: str, *, lifetime: timedelta = DEFAULT_LIFETIME,
                  allow_short: bool = False, now: datetime | None = None) -> x509.Certificate:
        """A user certificate for the API (RBAC): CN user name, OU viewer|operator|admin.
        Client authentication only: it can never serve as a manager."""
        if role not in USER_ROLES:
            raise MalformedRequest(f"user role {role!r}: expected one of {', '.join(USER_ROLES)}")
        if not USER_NAME_RE.fullmatch(name):
            raise MalformedRequest(f"user name {name!r}: 1-64 of [A-Za-z0-9._-], starting "
                                   "with a letter or digit")
        return self._sign(csr, name, role, None, [ExtendedKeyUsageOID.CLIENT_AUTH],
                          lifetime, allow_short, now)

    def _sign(self, csr: bytes | str | x509.CertificateSigningRequest, cn: str, ou: str,
              sans: x509.SubjectAlternativeName | None, usages: list[x509.ObjectIdentifier],
              lifetime: timedelta, allow_short: bool, now: datetime | None) -> x509.Certificate:
        if not isinstance(csr, x509.CertificateSigningRequest):
            csr = pem.load_csr(csr)
        elif not csr.is_signature_valid:
            raise MalformedRequest("certificate signing request: its signature does not verify")
        check_lifetime(lifetime, allow_short)
        start = _second(now or utcnow())
        # Backdating covers clock skew between nodes; a test certificate of seconds is not
        # backdated, or it would be mostly spent before it was issued.
        skew = CLOCK_SKEW if lifetime >= MIN_LIFETIME else timedelta(0)
        end = min(start + lifetime, self.cert.not_valid_after_utc)
        pub = csr.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, ou, self.cluster_id))
            .issuer_name(self.cert.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - skew).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub),  # type: ignore[arg-type]
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        if sans is not None:
            builder = builder.add_extension(sans, critical=False)
        return builder.sign(self.key, hashes.SHA256())
