"""The cluster CA as the manager runs it: `shoal init`, the join, renewals, token rotation,
revocation, role changes and user certificates, with the store kept in step.

shoal.ca holds the mechanisms and does no I/O; this module decides what is persisted where:
the root key and certificate in <state>/ca (files, 0600/0644), the manager's own node
credentials in <state>/tls, and the join tokens, revocations and certificate lifetime in the
store's Cluster object (so every manager sees them), each change in one transaction.
"""

from __future__ import annotations

import copy
import logging
import os
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shoal import ca
from shoal.ca.names import SPEC_OF_ROLE
from shoal.errors import Conflict, InvalidArgument, NotFound
from shoal.model.objects import Obj, new_cluster, new_node, now
from shoal.store.base import BaseStore

log = logging.getLogger("shoal.manager.security")

CA_DIR, TLS_DIR = "ca", "tls"
REVOCATIONS = "ShoalRevocations"  # Cluster field; not Docker's, stripped for non-admins
USERS = "ShoalUsers"  # Cluster field: the user certificates issued (no keys), for revocation
PRUNE_EVERY = 24 * 3600.0  # seconds between prunes of expired revocations
ROLE_LEVEL = {ca.VIEWER: 0, ca.OPERATOR: 1, ca.ADMIN: 2}


def _lifetime_ns(lifetime: timedelta) -> int:
    return int(lifetime.total_seconds() * 1e9)


def short_certs_allowed() -> bool:
    """The documented test-only override (shoal.ca.SHORT_LIFETIME_ENV) for this process."""
    return os.environ.get(ca.SHORT_LIFETIME_ENV) == "1"


def init_cluster(store: BaseStore, state_dir: Path, advertise: str, *, hostname: str,
                 lifetime: timedelta = ca.DEFAULT_LIFETIME,
                 agent_state_dir: Path | None = None) -> tuple[Obj, bool]:
    """`shoal init`: a new cluster with its root CA, join tokens and first manager node.
    Idempotent: a store that already has a cluster CA is left as it is. Returns the Cluster
    object and whether it was made now.

    The manager's node identity is written to <state>/tls (the manager serves with it) and,
    when `agent_state_dir` is given, a second key and certificate for the same node id to
    <agent_state_dir>/tls, for the agent that runs beside the manager on this host."""
    existing = store.list("cluster")
    if existing and existing[0]["TLSInfo"].get("TrustRoot"):
        return existing[0], False
    cluster = existing[0] if existing else new_cluster()
    allow_short = short_certs_allowed()
    auth = ca.Authority.create(cluster["ID"], node_lifetime=lifetime, allow_short=allow_short)
    host = advertise.rpartition(":")[0] or advertise
    node_id = ca.new_node_id()
    # Files first, the store last: a crash in between leaves no cluster, and init runs again.
    auth.root.save(state_dir / CA_DIR)
    auth.issue_node_credentials(node_id, "manager", addrs=[host]).save(state_dir / TLS_DIR)
    if agent_state_dir is not None:
        auth.issue_node_credentials(node_id, "manager", addrs=[host]).save(
            agent_state_dir / TLS_DIR)
    cluster = copy.deepcopy(cluster)
    cluster["JoinTokens"] = auth.tokens.to_dict()
    cluster["TLSInfo"] = auth.root.tls_info()
    cluster["Spec"]["CAConfig"]["NodeCertExpiry"] = _lifetime_ns(lifetime)
    cluster[REVOCATIONS] = auth.revocations.to_dict()
    node = new_node(node_id, hostname, host, "manager", {})
    node["Status"] = {"State": "down", "Addr": host, "Message": "waiting for its agent"}
    node["ManagerStatus"] = {"Leader": True, "Reachability": "reachable", "Addr": advertise}
    with store.tx() as tx:
        (tx.update if existing else tx.create)("cluster", cluster)
        tx.create("node", node)
    return store.list("cluster")[0], True


class ClusterSecurity:
    """The manager's Authority, loaded from <state>/ca and the store, and every operation on
    it that changes the store."""

    def __init__(self, store: BaseStore, authority: ca.Authority, state_dir: Path,
                 advertise: str) -> None:
        self.store = store
        self.authority = authority
        self.state_dir = state_dir
        self.advertise = advertise
        self.on_revoke: Any = lambda node_id: None  # set by the manager: drop its session
        self.on_role_change: Any = lambda node_id: None  # set by the manager: ask to renew
        self.on_renew: Any = lambda node_id, not_after: None  # set by the manager: extend
        self.manager_status: Any = lambda node: {}  # set by the manager: the dispatcher's

    @classmethod
    def load(cls, store: BaseStore, state_dir: Path, advertise: str) -> ClusterSecurity:
        clusters = store.list("cluster")
        if not clusters or not clusters[0]["TLSInfo"].get("TrustRoot"):
            raise ca.CAStoreError(f"no cluster in {state_dir}: run `shoal init --state-dir "
                                  f"{state_dir} --advertise-addr {advertise}` first")
        cluster = clusters[0]
        root = ca.RootCA.load(state_dir / CA_DIR)
        tokens = ca.JoinTokens.from_dict(cluster["JoinTokens"])
        revocations = ca.Revocations.from_dict(cluster.get(REVOCATIONS) or {})
        lifetime = timedelta(microseconds=cluster["Spec"]["CAConfig"]["NodeCertExpiry"] / 1000)
        auth = ca.Authority(root, tokens, revocations, node_lifetime=lifetime,
                            allow_short=short_certs_allowed())
        return cls(store, auth, state_dir, advertise)

    @property
    def trust(self) -> ca.Trust:
        return self.authority.trust

    def server_context(self) -> ssl.SSLContext:
        """The cluster port's TLS: mutual, but a client without a certificate may reach the
        CA and the join (docs/security.md, "one port for the cluster and the join")."""
        creds = self.credentials()
        return ca.server_context(self.authority.root.cert, creds.cert, creds.key,
                                 require_client_cert=False)

    def credentials(self) -> ca.NodeCredentials:
        return ca.NodeCredentials.load(self.state_dir / TLS_DIR)

    def renew_own(self, ctx: ssl.SSLContext) -> ca.NodeCredentials:
        """A new key and certificate for the manager's own node, loaded into the live server
        context: open connections keep their session."""
        old = self.credentials()
        host = self.advertise.rpartition(":")[0]
        node = self.store.get("node", old.identity.name)
        role = node["Spec"]["Role"] if node else "manager"
        new = self.authority.issue_node_credentials(old.identity.name, role, addrs=[host])
        new.save(self.state_dir / TLS_DIR)
        ca.load_identity(ctx, new.cert, new.key)
        return new

    # --- store helpers ---

    def _save_cluster(self, **fields: Any) -> None:
        with self.store.tx() as tx:
            cluster = copy.deepcopy(self.store.list("cluster")[0])
            cluster.update(fields)
            tx.update("cluster", cluster)

    # --- nodes ---

    def join(self, body: Any, peer: str) -> dict[str, str]:
        """POST /shoal/v1/join: admit the node and record it (down until its agent connects)."""
        if not isinstance(body, dict) or not isinstance(body.get("token"), str) \
                or not isinstance(body.get("csr"), str):
            raise InvalidArgument('a join request is {"token", "csr", "hostname"?}')
        hostname = str(body.get("hostname") or "")[:253]
        try:
            adm = self.authority.admit(body["token"], body["csr"], previous=body.get("previous"))
        except ca.CAError as exc:
            log.warning("refused a join from %s: %s", peer, exc)
            raise
        role = SPEC_OF_ROLE[adm.role]
        with self.store.tx() as tx:
            node = tx.get("node", adm.node_id)
            if node is None:
                node = new_node(adm.node_id, hostname, peer, role, {})
                node["Status"] = {"State": "down", "Addr": peer,
                                  "Message": "joined; waiting for its agent"}
                tx.create("node", node)
            else:
                node["Spec"]["Role"] = role
                if hostname:
                    node["Description"]["Hostname"] = hostname
                tx.update("node", node)
        log.info("node %s (%s) %s as %s from %s", hostname, adm.node_id,
                 "rejoined" if adm.rejoined else "joined", role, peer)
        return adm.to_json()

    def node_of(self, ident: ca.Identity) -> Obj:
        """The stored node behind a verified node certificate; a removed node is refused."""
        node = self.store.get("node", ident.node_id)
        if node is None:
            raise ca.CertificateRevoked(f"{ident}: node removed from the cluster")
        return node

    def effective_role(self, ident: ca.Identity) -> str:
        """The lower of the certificate's OU and the store's role: a demoted manager is a
        worker from the moment of the demote, before its certificate is reissued."""
        if not ident.is_node:
            return ident.role
        node = self.node_of(ident)
        return "manager" if ident.is_manager and node["Spec"]["Role"] == "manager" else "worker"

    def renew(self, ident: ca.Identity, body: Any) -> dict[str, str]:
        """POST /shoal/v1/renew: a new certificate for the caller's node id, with the role the
        store has now.

        The old certificate is not revoked after a role change: effective_role already
        reads it as the lower of its OU and the store's role, and a node whose renewal answer
        was lost can still renew with it instead of being locked out."""
        if not isinstance(body, dict) or not isinstance(body.get("csr"), str):
            raise InvalidArgument('a renewal request is {"csr"}')
        node = self.node_of(ident)
        cert = self.authority.renew(ident, body["csr"], role=node["Spec"]["Role"])
        self.on_renew(ident.node_id, cert.not_valid_after_utc.timestamp())
        return {"cert": ca.cert_pem(cert).decode()}

    def remove_node(self, node_id: str, force: bool) -> None:
        """DELETE /nodes/{id}: revoke every certificate of the node, then forget it."""
        node = self.store.get("node", node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        if node["Spec"]["Role"] == "manager":
            raise Conflict(f"node {node_id} is a cluster manager: demote it before removing it")
        if node["Status"]["State"] == "ready" and not force:
            raise Conflict(f"node {node_id} is not down and can't be removed (use --force)")
        self.authority.revoke_node(node_id)
        with self.store.tx() as tx:
            cluster = copy.deepcopy(self.store.list("cluster")[0])
            cluster[REVOCATIONS] = self.authority.revocations.to_dict()
            tx.update("cluster", cluster)
            tx.delete("node", node_id)
        self.on_revoke(node_id)
        log.warning("node %s removed: its certificates are revoked", node_id)

    def update_node(self, node_id: str, version: int, spec: Any) -> None:
        """POST /nodes/{id}/update: role (promote/demote), availability, labels."""
        node = self.store.get("node", node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        if not isinstance(spec, dict):
            raise InvalidArgument("a node update is a NodeSpec object")
        if version != node["Version"]["Index"]:
            raise Conflict(f"update out of sequence: node {node_id} is at version "
                           f"{node['Version']['Index']}, not {version}")
        role = spec.get("Role", node["Spec"]["Role"])
        if role not in ("manager", "worker"):
            raise InvalidArgument(f"invalid role {role!r}: manager or worker")
        availability = spec.get("Availability", node["Spec"]["Availability"])
        if availability not in ("active", "pause", "drain"):
            raise InvalidArgument(f"invalid availability {availability!r}")
        managers = [n for n in self.store.peek("node") if n["Spec"]["Role"] == "manager"]
        if role == "worker" and node["Spec"]["Role"] == "manager" and len(managers) <= 1:
            raise Conflict("cannot demote the last manager of the cluster")
        changed_role = role != node["Spec"]["Role"]
        node = copy.deepcopy(node)
        node["Spec"] = {"Labels": dict(spec.get("Labels") or {}), "Role": role,
                        "Availability": availability,
                        **({"Name": spec["Name"]} if spec.get("Name") else {})}
        node["UpdatedAt"] = now()
        node.pop("ManagerStatus", None)
        if role == "manager":
            node["ManagerStatus"] = self.manager_status(node)
        with self.store.tx() as tx:
            tx.update("node", node)
        if changed_role:
            log.info("node %s is now a %s: asking it to renew its certificate", node_id, role)
            self.on_role_change(node_id)

    # --- cluster ---

    def rotate_token(self, role: str) -> None:
        self.authority.tokens.rotate(role)
        self._save_cluster(JoinTokens=self.authority.tokens.to_dict())
        log.warning("the %s join token was rotated: the old one is refused from now on", role)

    def set_cert_expiry(self, ns: int) -> None:
        self.authority.set_lifetime(timedelta(microseconds=ns / 1000))
        with self.store.tx() as tx:
            cluster = copy.deepcopy(self.store.list("cluster")[0])
            cluster["Spec"]["CAConfig"]["NodeCertExpiry"] = int(ns)
            tx.update("cluster", cluster)

    # --- users (RBAC) ---

    def users(self) -> list[Obj]:
        """Every user certificate issued and not revoked: name, role, serial, expiry."""
        return list(self.store.list("cluster")[0].get(USERS) or [])

    def issue_user(self, body: Any) -> dict[str, str]:
        """POST /shoal/v1/users: a client certificate for an API user, recorded so that
        `shoal user rm` can revoke it."""
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str)
                                                  for k in ("name", "role", "csr")):
            raise InvalidArgument('a user request is {"name", "role", "csr"}')
        if body["role"] not in ROLE_LEVEL:
            raise InvalidArgument(f"unknown role {body['role']!r}: viewer, operator or admin")
        cert = self.authority.issue_user(body["csr"], body["name"], body["role"])
        ident = ca.identity_of(cert)
        record = {"Name": ident.name, "Role": ident.role, "Serial": f"{ident.serial:x}",
                  "CreatedAt": now(), "NotAfter": ident.not_after.isoformat()}
        self._save_cluster(**{USERS: [*self.users(), record]})
        log.info("issued a %s certificate to user %s", body["role"], body["name"])
        return {"cert": ca.cert_pem(cert).decode(), "ca": self.authority.root.cert_pem.decode()}

    def remove_user(self, name: str) -> int:
        """DELETE /shoal/v1/users/{name}: revoke every certificate the user holds, at once."""
        mine = [u for u in self.users() if u["Name"] == name]
        if not mine:
            raise NotFound(f"user {name} not found")
        for user in mine:
            self.authority.revocations.revoke_serial(
                int(user["Serial"], 16), until=datetime.fromisoformat(user["NotAfter"]),
                reason=f"user {name} removed")
        self._save_cluster(**{USERS: [u for u in self.users() if u["Name"] != name],
                              REVOCATIONS: self.authority.revocations.to_dict()})
        log.warning("user %s removed: %d certificate(s) revoked", name, len(mine))
        return len(mine)

    def prune(self) -> None:
        """Forget revocations and users whose certificates have expired (expiry refuses them
        anyway); node ids stay revoked for good."""
        at = datetime.now(UTC)
        before = self.authority.revocations.to_dict()
        self.authority.revocations.prune(at)
        users = [u for u in self.users() if datetime.fromisoformat(u["NotAfter"]) >= at]
        if self.authority.revocations.to_dict() != before or users != self.users():
            self._save_cluster(**{USERS: users,
                                  REVOCATIONS: self.authority.revocations.to_dict()})
