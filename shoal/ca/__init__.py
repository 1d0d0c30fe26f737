"""The cluster CA and node identity: how shoal knows who is on the other end of a connection.

How it works (the design and the wiring are in docs/security.md):

- `shoal init` makes a root CA (`RootCA.create`: ECDSA P-256, CN shoal-root-ca, O cluster id)
  and two join tokens (`JoinTokens`, Docker's SWMTKN-1-<CA digest>-<secret>), bundled with
  the revocations and the node certificate lifetime in an `Authority`.
- A joining node has only a token and an address. `fetch_and_pin` gets the CA certificate
  over TLS that verifies nothing and keeps it only if its sha256 is the one in the token;
  `request_join` then sends a CSR (its key never leaves it) and gets a certificate: CN node id,
  OU swarm-manager|swarm-worker (which secret matched decides), O cluster id.
- Every connection on the cluster port is mutual TLS 1.3 (`server_context`,
  `client_context`); `auth_middleware` / `peer_identity` turn the peer certificate into an
  `Identity` through `Trust.verify`: this CA, this cluster, not revoked, in date.
  `TLSSite` is aiohttp's TCPSite that also logs every refused handshake and why.
- Nodes renew at a random 50-80 % of the certificate's life (`renew_delay`,
  `request_renewal`); a renewed certificate is loaded into the live context
  (`load_identity`), so open sessions are not dropped.

Imports: shoal.errors, cryptography and aiohttp only; nothing else of shoal.
"""

from shoal.ca.authority import Admission, Authority, new_node_id
from shoal.ca.credentials import NodeCredentials
from shoal.ca.errors import (
    CAError,
    CAStoreError,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRefused,
    CertificateRevoked,
    InvalidLifetime,
    JoinRefused,
    MalformedRequest,
    MalformedToken,
    ManagerUnreachable,
    NoCertificate,
    NotAShoalCertificate,
    PermissionDenied,
    PinningFailed,
    TokenRefused,
    UnknownAuthority,
    WrongCA,
)
from shoal.ca.identity import Identity, identity_of
from shoal.ca.join import fetch_and_pin, request_join, request_renewal
from shoal.ca.keys import make_csr, new_key
from shoal.ca.names import (
    ADMIN,
    CA_PATH,
    DEFAULT_LIFETIME,
    JOIN_PATH,
    MANAGER,
    MANAGER_SERVER_NAME,
    MIN_LIFETIME,
    OPEN_PATHS,
    OPERATOR,
    RENEW_PATH,
    SHORT_LIFETIME_ENV,
    VIEWER,
    WORKER,
)
from shoal.ca.pem import cert_pem, key_pem, load_cert, load_csr, load_key
from shoal.ca.renewal import renew_at, renew_delay, retry_delay
from shoal.ca.revocation import Revocations
from shoal.ca.root import RootCA, ca_digest, check_lifetime
from shoal.ca.tls import (
    IDENTITY,
    LOCAL,
    TLSSite,
    auth_middleware,
    authorize,
    client_context,
    describe_tls_error,
    json_error,
    load_identity,
    peer_identity,
    server_context,
    transport_identity,
)
from shoal.ca.tokens import JoinToken, JoinTokens
from shoal.ca.trust import Trust

__all__ = [
    "ADMIN", "CA_PATH", "DEFAULT_LIFETIME", "IDENTITY", "JOIN_PATH", "LOCAL", "MANAGER",
    "MANAGER_SERVER_NAME", "MIN_LIFETIME", "OPEN_PATHS", "OPERATOR", "RENEW_PATH",
    "SHORT_LIFETIME_ENV", "VIEWER", "WORKER",
    "Admission", "Authority", "CAError", "CAStoreError", "CertificateExpired",
    "CertificateNotYetValid", "CertificateRefused", "CertificateRevoked", "Identity",
    "InvalidLifetime", "JoinRefused", "JoinToken", "JoinTokens", "MalformedRequest",
    "MalformedToken", "ManagerUnreachable", "NoCertificate", "NodeCredentials",
    "NotAShoalCertificate", "PermissionDenied", "PinningFailed", "Revocations", "RootCA",
    "TLSSite", "TokenRefused", "Trust", "UnknownAuthority", "WrongCA",
    "auth_middleware", "authorize", "ca_digest", "cert_pem", "check_lifetime",
    "client_context", "describe_tls_error", "fetch_and_pin", "identity_of", "json_error", "key_pem",
    "load_cert", "load_csr",
    "load_identity", "load_key", "make_csr", "new_key", "new_node_id", "peer_identity",
    "renew_at", "renew_delay", "request_join", "request_renewal", "retry_delay",
    "server_context", "transport_identity",
]
