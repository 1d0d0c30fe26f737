"""Who a certificate says its holder is: the subject shoal writes, read back.

A node certificate: CN = node id, OU = swarm-manager | swarm-worker, O = cluster id.
A user certificate: CN = user name, OU = viewer | operator | admin, O = cluster id.
`identity_of` only reads; `Trust.verify` decides whether to believe it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from shoal.ca.errors import NotAShoalCertificate
from shoal.ca.names import MANAGER, NODE_ROLES, SPEC_OF_ROLE, USER_ROLES, WORKER

NODE_ID_RE = re.compile(r"[a-z0-9]{1,64}")  # swarmkit ids: 25 base36 characters
USER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Identity:
    name: str  # CN: a node id or a user name
    role: str  # OU: one of NODE_ROLES or USER_ROLES
    cluster_id: str  # O
    serial: int
    not_before: datetime
    not_after: datetime

    @property
    def is_node(self) -> bool:
        return self.role in NODE_ROLES

    @property
    def is_user(self) -> bool:
        return self.role in USER_ROLES

    @property
    def is_manager(self) -> bool:
        return self.role == MANAGER

    @property
    def is_worker(self) -> bool:
        return self.role == WORKER

    @property
    def node_id(self) -> str:
        if not self.is_node:
            raise NotAShoalCertificate(f"{self} is a user, not a node")
        return self.name

    @property
    def spec_role(self) -> str:
        """The role as Node.Spec.Role says it ("manager"/"worker"), or the user role."""
        return SPEC_OF_ROLE.get(self.role, self.role)

    def __str__(self) -> str:
        kind = "node" if self.is_node else "user"
        return f"{kind} {self.name} ({self.role})"


def _one(name: x509.Name, oid: x509.ObjectIdentifier, label: str, cert: x509.Certificate) -> str:
    attrs = name.get_attributes_for_oid(oid)
    if len(attrs) != 1:
        raise NotAShoalCertificate(
            f"certificate {cert.subject.rfc4514_string()!r} (serial {cert.serial_number:x}) "
            f"has {len(attrs)} {label} attributes, a shoal certificate has exactly one")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


def identity_of(cert: x509.Certificate) -> Identity:
    """Read node id (or user name), role and cluster id from a certificate; no trust implied."""
    cn = _one(cert.subject, NameOID.COMMON_NAME, "CN", cert)
    ou = _one(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU", cert)
    org = _one(cert.subject, NameOID.ORGANIZATION_NAME, "O", cert)
    if ou in NODE_ROLES:
        ok = NODE_ID_RE.fullmatch(cn)
    elif ou in USER_ROLES:
        ok = USER_NAME_RE.fullmatch(cn)
    else:
        raise NotAShoalCertificate(
            f"certificate of {cn!r} has role (OU) {ou!r}: not one of "
            f"{', '.join(NODE_ROLES + USER_ROLES)}")
    if not ok:
        raise NotAShoalCertificate(f"certificate CN {cn!r} is not a valid name for role {ou}")
    return Identity(name=cn, role=ou, cluster_id=org, serial=cert.serial_number,
                    not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)
