"""Every name, role and limit of the CA, declared once.

The node roles are Docker's (swarmkit `ca.ManagerRole`/`ca.WorkerRole`), so a certificate reads
the same to someone who knows Docker's: CN the node id, OU the role, O the cluster id.
"""

from __future__ import annotations

from datetime import timedelta

ROOT_CN = "shoal-root-ca"

MANAGER = "swarm-manager"
WORKER = "swarm-worker"
NODE_ROLES = (MANAGER, WORKER)

# The store's Node.Spec.Role ("manager"/"worker") <-> the certificate's OU.
ROLE_OF_SPEC = {"manager": MANAGER, "worker": WORKER}
SPEC_OF_ROLE = {v: k for k, v in ROLE_OF_SPEC.items()}

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
USER_ROLES = (VIEWER, OPERATOR, ADMIN)

# Agents connect with server_hostname=MANAGER_SERVER_NAME: only a certificate whose SAN says
# "swarm-manager" (a manager's) passes the hostname check, so a worker's valid certificate
# can never pose as the manager (swarmkit dials managers by this name too).
MANAGER_SERVER_NAME = MANAGER

ROOT_LIFETIME = timedelta(days=20 * 365)  # Docker's root CA lives 20 years as well
DEFAULT_LIFETIME = timedelta(days=90)  # Docker's NodeCertExpiry default
MIN_LIFETIME = timedelta(hours=1)  # Docker's minimum
MIN_TEST_LIFETIME = timedelta(seconds=1)  # the floor even with the test-only override
# Allow issuing node and user certificates shorter than MIN_LIFETIME (tests of expiry and
# renewal). Never set in production: the lab's tests set it for the processes they start.
SHORT_LIFETIME_ENV = "SHOAL_TEST_SHORT_CERTS"

# not_before is set this far in the past so that a peer whose clock is a little behind does
# not refuse a certificate fresh from the manager (swarmkit backdates as well).
CLOCK_SKEW = timedelta(minutes=5)

# Renewal happens at a random point in this fraction of a certificate's life (swarmkit's
# CertLowerRotationRange / CertUpperRotationRange), so that nodes joined together do not all
# come back at the same instant.
RENEW_FROM, RENEW_TO = 0.5, 0.8

# HTTP paths of the CA on the manager's cluster port. Only the first two may be called
# without a client certificate.
CA_PATH = "/shoal/v1/ca"
JOIN_PATH = "/shoal/v1/join"
RENEW_PATH = "/shoal/v1/renew"
OPEN_PATHS = frozenset({CA_PATH, JOIN_PATH})
