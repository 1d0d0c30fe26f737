"""Deciding whether to believe a certificate: issued by this cluster's CA, for this cluster,
in its validity period, not revoked. Each refusal is its own error class and says why.

OpenSSL already checks the chain and the dates during the handshake; `verify` checks them
again because it is also used where no handshake happened (a rejoin's expired certificate,
a certificate a client received), and because revocation and the cluster id are only known
here. The checks run in this order, so the most final reason is the one reported: another
CA, not a shoal certificate, another cluster, revoked, then the dates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from shoal.ca import pem
from shoal.ca.errors import (
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    NotAShoalCertificate,
    UnknownAuthority,
)
from shoal.ca.identity import Identity, identity_of
from shoal.ca.names import ROOT_CN
from shoal.ca.revocation import Revocations
from shoal.ca.root import ca_digest, utcnow
from shoal.ca.tokens import short_digest

SIGNATURE_CACHE = 4096


def _ago(delta_s: float) -> str:
    s = int(abs(delta_s))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


@dataclass
class Trust:
    """What a node or manager trusts: one CA certificate, and the revocations it knows."""

    ca_cert: x509.Certificate
    revocations: Revocations = field(default_factory=Revocations)
    clock: Callable[[], datetime] = utcnow

    def __post_init__(self) -> None:
        # DER of certificates whose signature was checked: one ECDSA verify per peer
        # certificate, not one per request. Only the signature is cached; dates, cluster id
        # and revocation are checked on every call.
        self._signed: dict[bytes, x509.Certificate] = {}
        self.ca_cert = pem.load_cert(self.ca_cert, "CA certificate")
        ident = self.ca_cert.subject
        orgs = ident.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)
        self.cluster_id = str(orgs[0].value) if len(orgs) == 1 else ""
        self.digest = ca_digest(self.ca_cert)

    def _describe_ca(self) -> str:
        return f"{ROOT_CN} of cluster {self.cluster_id} ({short_digest(self.digest)})"

    def check_issuer(self, cert: x509.Certificate) -> None:
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise UnknownAuthority(
                f"certificate {cert.subject.rfc4514_string()!r} was issued by "
                f"{cert.issuer.rfc4514_string()!r}, not by this cluster's CA "
                f"({self._describe_ca()})") from exc

    def verify(self, cert: x509.Certificate | bytes, *, now: datetime | None = None,
               allow_expired: bool = False) -> Identity:
        """The identity a certificate proves, or an error naming why it proves none.

        allow_expired: accept a certificate past its not_after (a rejoin presents its expired
        certificate to keep its node id; everything else is still checked)."""
        if isinstance(cert, bytes) and cert in self._signed:
            cert = self._signed[cert]
        else:
            der = cert if isinstance(cert, bytes) else None
            cert = pem.load_cert(cert)
            self.check_issuer(cert)
            if der is not None:
                if len(self._signed) >= SIGNATURE_CACHE:
                    self._signed.pop(next(iter(self._signed)))
                self._signed[der] = cert
        now = now or self.clock()
        ident = identity_of(cert)
        if ident.cluster_id != self.cluster_id:
            raise NotAShoalCertificate(f"certificate of {ident} is for cluster "
                                       f"{ident.cluster_id!r}, this is {self.cluster_id!r}")
        reason = self.revocations.why(ident)
        if reason is not None:
            raise CertificateRevoked(f"certificate of {ident} (serial {ident.serial:x}) "
                                     f"is revoked: {reason}")
        ca_end = self.ca_cert.not_valid_after_utc
        if now > ca_end:
            raise CertificateExpired(f"this cluster's CA expired at {ca_end:%Y-%m-%d %H:%M:%SZ}")
        if now < ident.not_before:
            raise CertificateNotYetValid(
                f"certificate of {ident} is not valid before "
                f"{ident.not_before:%Y-%m-%d %H:%M:%SZ} (in "
                f"{_ago((ident.not_before - now).total_seconds())}): is a clock wrong?")
        if now > ident.not_after and not allow_expired:
            hint = ("a node offline past its expiry rejoins with `shoal join --token TOKEN "
                    "MANAGER:2377` and keeps its node id" if ident.is_node else
                    "ask an admin for a new one (`shoal user create`)")
            raise CertificateExpired(
                f"certificate of {ident} expired at {ident.not_after:%Y-%m-%d %H:%M:%SZ} "
                f"({_ago((now - ident.not_after).total_seconds())} ago): {hint}")
        return ident
