"""The manager's side of the CA in one object: the root, the join tokens, the revocations and
the node certificate lifetime, with the three things the manager's endpoints do.

- admit: a token and a CSR (from POST /shoal/v1/join) -> a node certificate; a new node id,
  or the old one when the request carries the node's previous (possibly expired) certificate
  and the CSR proves possession of its key.
- renew: a verified identity and a CSR (from POST /shoal/v1/renew over mutual TLS) -> a new
  certificate for the same node id, with the role the store has now (promote/demote).
- issue_user: a user certificate for the API.

No I/O, no store: the caller persists tokens and revocations (their to_dict) in the Cluster
object and the new node in the store, in the same transaction as it answers.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.ca import pem
from shoal.ca.credentials import NodeCredentials
from shoal.ca.errors import CertificateRefused, MalformedRequest, PermissionDenied
from shoal.ca.identity import Identity
from shoal.ca.keys import make_csr, new_key
from shoal.ca.names import DEFAULT_LIFETIME, NODE_ROLES, ROLE_OF_SPEC
from shoal.ca.revocation import Revocations
from shoal.ca.root import RootCA, check_lifetime
from shoal.ca.tokens import JoinTokens
from shoal.ca.trust import Trust

_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_node_id() -> str:
    """25 characters of base36, as swarmkit's identity.NewID (and shoal.model's new_id)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(25))


@dataclass(frozen=True)
class Admission:
    node_id: str
    role: str  # swarm-manager / swarm-worker
    cert: x509.Certificate
    ca_cert: x509.Certificate
    rejoined: bool  # True when the node kept the id of its previous certificate

    def to_json(self) -> dict[str, str]:
        """The body of a successful POST /shoal/v1/join."""
        return {"node_id": self.node_id, "role": self.role,
                "cert": pem.cert_pem(self.cert).decode(),
                "ca": pem.cert_pem(self.ca_cert).decode()}


@dataclass
class Authority:
    root: RootCA
    tokens: JoinTokens
    revocations: Revocations = field(default_factory=Revocations)
    node_lifetime: timedelta = DEFAULT_LIFETIME
    allow_short: bool = False  # tests only: lifetimes below one hour

    def __post_init__(self) -> None:
        check_lifetime(self.node_lifetime, self.allow_short)
        if self.tokens.ca_digest != self.root.digest:
            raise MalformedRequest("join tokens were made for another CA")
        self.trust = Trust(self.root.cert, self.revocations)

    @classmethod
    def create(cls, cluster_id: str, **kwargs: object) -> Authority:
        """A new cluster CA with fresh tokens (what `shoal init` does, before saving)."""
        root = RootCA.create(cluster_id)
        return cls(root, JoinTokens.generate(root.digest), **kwargs)  # type: ignore[arg-type]

    def set_revocations(self, revocations: Revocations) -> None:
        """Replace the revocations (reloaded from the store); verification uses them at once.
        Mutating `self.revocations` in place works as well: Trust holds the same object."""
        self.revocations = self.trust.revocations = revocations

    def set_lifetime(self, lifetime: timedelta) -> None:
        """`swarm update --cert-expiry`: applies to certificates issued from now on."""
        self.node_lifetime = check_lifetime(lifetime, self.allow_short)

    def _sign(self, csr: bytes | str, node_id: str, role: str, addrs: Iterable[str],
              now: datetime | None) -> x509.Certificate:
        return self.root.sign_node(csr, node_id, role, addrs=addrs, lifetime=self.node_lifetime,
                                   allow_short=self.allow_short, now=now)

    def admit(self, token: str, csr: bytes | str, *, previous: bytes | str | None = None,
              addrs: Iterable[str] = (), now: datetime | None = None) -> Admission:
        """Check a join request and sign its CSR. Raises MalformedToken, WrongCA, TokenRefused,
        MalformedRequest, or a CertificateRefused for a bad `previous`.

        `addrs` go into the certificate's SAN: pass only addresses the manager vouches for,
        never ones the joining node claims."""
        role = self.tokens.role_for(token)
        request = pem.load_csr(csr)
        node_id, rejoined = new_node_id(), False
        if previous is not None:
            node_id = self._rejoin_id(previous, request, now)
            rejoined = True
        cert = self._sign(csr, node_id, role, addrs, now)
        return Admission(node_id, role, cert, self.root.cert, rejoined)

    def _rejoin_id(self, previous: bytes | str, request: x509.CertificateSigningRequest,
                   now: datetime | None) -> str:
        old = pem.load_cert(previous.encode() if isinstance(previous, str) else previous,
                            "previous certificate")
        ident = self.trust.verify(old, now=now, allow_expired=True)
        if not ident.is_node:
            raise CertificateRefused(f"previous certificate is of {ident}, not of a node")
        if old.public_key() != request.public_key():
            raise CertificateRefused(
                f"the CSR's key is not the key of the previous certificate of {ident}: to keep "
                "its node id a node must sign its request with its old key")
        return ident.name

    def renew(self, ident: Identity, csr: bytes | str, *, role: str | None = None,
              addrs: Iterable[str] = (), now: datetime | None = None) -> x509.Certificate:
        """A new certificate for a node that proved `ident` over mutual TLS. `role` is the role
        the store has for the node now ("manager"/"worker" or the OU), default unchanged."""
        if not ident.is_node:
            raise PermissionDenied(f"{ident} cannot renew a node certificate")
        new_role = ROLE_OF_SPEC.get(role, role) if role else ident.role
        if new_role not in NODE_ROLES:
            raise MalformedRequest(f"node role {role!r}: expected manager or worker")
        return self._sign(csr, ident.name, new_role, addrs, now)

    def issue_user(self, csr: bytes | str, name: str, role: str, *,
                   lifetime: timedelta | None = None,
                   now: datetime | None = None) -> x509.Certificate:
        return self.root.sign_user(csr, name, role, lifetime=lifetime or self.node_lifetime,
                                   allow_short=self.allow_short, now=now)

    def issue_node_credentials(self, node_id: str, role: str, *, addrs: Iterable[str] = (),
                               key: ec.EllipticCurvePrivateKey | None = None,
                               now: datetime | None = None) -> NodeCredentials:
        """Key, certificate and CA for a node made in this process: the first manager at
        `shoal init`, and tests. Joining nodes make their key themselves."""
        key = key or new_key()
        cert = self._sign(make_csr(key), node_id, ROLE_OF_SPEC.get(role, role), addrs, now)
        return NodeCredentials(key, cert, self.root.cert)

    def revoke_node(self, node_id: str, *, reason: str = "node removed") -> None:
        """`shoal node rm`: every certificate of the node is refused from the next request."""
        self.revocations.revoke_node(node_id, reason=reason)

    def revoke_cert(self, cert: x509.Certificate, *, reason: str = "certificate revoked") -> None:
        """One certificate (a user's; a node's old one after a role change)."""
        self.revocations.revoke_serial(cert.serial_number, until=cert.not_valid_after_utc,
                                       reason=reason)
