"""A node's credentials: its key, its certificate and the CA certificate it trusts.

On disk, in one directory (0700): `node.pem` holds the private key and the certificate
together (0600), so that a renewal replaces both with one rename and a crash can never leave
a key beside someone else's certificate; `ca.crt` (0644) is the pinned CA. ssl's
load_cert_chain reads `node.pem` as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.ca import pem
from shoal.ca.errors import CAStoreError
from shoal.ca.identity import Identity, identity_of

NODE_FILE = "node.pem"
CA_FILE = "ca.crt"


@dataclass(frozen=True)
class NodeCredentials:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca_cert: x509.Certificate

    def __post_init__(self) -> None:
        if self.key.public_key() != self.cert.public_key():
            raise CAStoreError(f"the private key is not the key of the certificate of "
                               f"{self.identity}")

    @property
    def identity(self) -> Identity:
        return identity_of(self.cert)

    def check(self, now: datetime | None = None) -> Identity:
        """Is this node's own certificate still good (CA, dates)? A manager refuses a bad one
        during the TLS handshake, which the client sees only as "server disconnected": the
        agent calls this before connecting and after a refused connection, so its log says
        why (CertificateExpired names the way back: `shoal join` again)."""
        from shoal.ca.trust import Trust

        return Trust(self.ca_cert).verify(self.cert, now=now)

    def save(self, directory: str | os.PathLike[str]) -> None:
        d = Path(directory)
        pem.private_dir(d)
        pem.write_file(d / CA_FILE, pem.cert_pem(self.ca_cert), 0o644)
        pem.write_file(d / NODE_FILE, pem.key_pem(self.key) + pem.cert_pem(self.cert), 0o600)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> NodeCredentials:
        d = Path(directory)
        if not (d / NODE_FILE).exists():
            raise CAStoreError(f"no node credentials in {d} (no {NODE_FILE}): this node has "
                               "not joined; run `shoal join --token TOKEN MANAGER:2377`")
        pem.check_private(d / NODE_FILE)
        data = (d / NODE_FILE).read_bytes()
        key = pem.load_key(data, f"node key in {d / NODE_FILE}")
        cert = pem.load_cert(data, f"node certificate in {d / NODE_FILE}")
        ca_cert = pem.load_cert(d / CA_FILE, f"CA certificate {d / CA_FILE}")
        return cls(key, cert, ca_cert)

    @staticmethod
    def exists(directory: str | os.PathLike[str]) -> bool:
        return (Path(directory) / NODE_FILE).exists()
