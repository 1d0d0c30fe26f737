"""Join tokens in Docker's format: SWMTKN-1-<CA digest>-<secret>.

The CA digest is the sha256 of the CA certificate as a number written in base36 and padded to
50 characters (ceil(log36(2^256))); the secret is 16 random bytes in base36 padded to 25
(ceil(log36(2^128))), exactly as swarmkit's GenerateJoinToken. The digest is public: it lets a
joining node pin the CA before it trusts anything. The secret is what admits a node, and which
of the two secrets (worker or manager) matched decides its role.

Secrets are compared in constant time, against both roles every time, so neither timing nor
the order of the checks tells how much of a guess was right. No error message repeats a
token's secret.
"""

from __future__ import annotations

import hmac
import secrets
import string
from dataclasses import dataclass

from shoal.ca.errors import MalformedToken, TokenRefused, WrongCA
from shoal.ca.names import MANAGER, ROLE_OF_SPEC, WORKER

PREFIX = "SWMTKN"
VERSION = "1"
DIGEST_LEN = 50
SECRET_LEN = 25
SECRET_BYTES = 16
_ALPHABET = string.digits + string.ascii_lowercase
_B36 = frozenset(_ALPHABET)
FORMAT = f"{PREFIX}-{VERSION}-<{DIGEST_LEN} base36 characters>-<{SECRET_LEN} base36 characters>"


def to_base36(n: int, width: int) -> str:
    digits = []
    while n:
        n, r = divmod(n, 36)
        digits.append(_ALPHABET[r])
    return "".join(reversed(digits)).rjust(width, "0")


def new_secret() -> str:
    return to_base36(int.from_bytes(secrets.token_bytes(SECRET_BYTES), "big"), SECRET_LEN)


def short_digest(hex_digest: str) -> str:
    return f"sha256:{hex_digest[:12]}..."


def _role(role: str) -> str:
    role = ROLE_OF_SPEC.get(role, role)
    if role not in (WORKER, MANAGER):
        raise ValueError(f"join token role {role!r}: expected worker or manager")
    return role


@dataclass(frozen=True)
class JoinToken:
    ca_digest: str  # sha256 of the CA certificate's DER, 64 hex digits
    secret: str  # 25 base36 characters

    def __str__(self) -> str:
        return f"{PREFIX}-{VERSION}-{to_base36(int(self.ca_digest, 16), DIGEST_LEN)}-{self.secret}"

    def __repr__(self) -> str:  # never the secret, even in a traceback's locals
        return f"JoinToken(ca_digest={self.ca_digest!r}, secret=<hidden>)"

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        """Check the shape only; `JoinTokens.role_for` decides whether the token admits."""
        if not isinstance(text, str) or not text.strip():
            raise MalformedToken(f"empty join token: expected {FORMAT}")
        parts = text.strip().split("-")
        if parts[0] != PREFIX:
            raise MalformedToken(f"not a join token: it must start with '{PREFIX}-' "
                                 f"(this one starts with {parts[0][:8]!r}); expected {FORMAT}")
        if len(parts) > 1 and parts[1] != VERSION:
            extra = " (version 2 is Docker's FIPS variant)" if parts[1] == "2" else ""
            raise MalformedToken(f"unsupported join token version {parts[1][:8]!r}{extra}: "
                                 f"shoal reads version {VERSION}, {FORMAT}")
        if len(parts) != 4:
            raise MalformedToken(f"malformed join token: {len(parts)} parts separated by '-', "
                                 f"expected 4: {FORMAT}")
        digest, secret = parts[2], parts[3]
        for label, value, width in (("CA digest", digest, DIGEST_LEN),
                                    ("secret", secret, SECRET_LEN)):
            if len(value) != width:
                raise MalformedToken(f"malformed join token: the {label} part has "
                                     f"{len(value)} characters, expected {width}")
            if not set(value) <= _B36:
                raise MalformedToken(f"malformed join token: the {label} part must be "
                                     "lowercase base36 (0-9, a-z)")
        number = int(digest, 36)
        if number >> 256:
            raise MalformedToken("malformed join token: the CA digest part is larger than a "
                                 "sha256 digest can be")
        return cls(f"{number:064x}", secret)

    def redacted(self) -> str:
        return f"{PREFIX}-{VERSION}-{to_base36(int(self.ca_digest, 16), DIGEST_LEN)}-<secret>"


class JoinTokens:
    """The cluster's two join tokens (worker, manager) for one CA. Kept by the manager."""

    def __init__(self, ca_digest: str, worker_secret: str, manager_secret: str) -> None:
        if worker_secret == manager_secret:
            raise ValueError("worker and manager join secrets must differ")
        self.ca_digest = ca_digest
        self._secrets = {WORKER: worker_secret, MANAGER: manager_secret}

    @classmethod
    def generate(cls, ca_digest: str) -> JoinTokens:
        return cls(ca_digest, new_secret(), new_secret())

    def token(self, role: str) -> str:
        """The current token for `role` ("worker"/"manager" or swarm-worker/swarm-manager)."""
        return str(JoinToken(self.ca_digest, self._secrets[_role(role)]))

    def rotate(self, role: str) -> str:
        """A new secret for `role`: the old token is refused from now on. Returns the new one."""
        role = _role(role)
        other = self._secrets[MANAGER if role == WORKER else WORKER]
        secret = new_secret()
        while secret in (other, self._secrets[role]):  # 2^-128: a loop for correctness only
            secret = new_secret()
        self._secrets[role] = secret
        return self.token(role)

    def role_for(self, token: str) -> str:
        """The role (swarm-worker / swarm-manager) a token admits, or why it admits none."""
        parsed = JoinToken.parse(token)
        if not hmac.compare_digest(parsed.ca_digest, self.ca_digest):
            raise WrongCA(f"join token is for another cluster's CA "
                          f"({short_digest(parsed.ca_digest)}; this cluster's is "
                          f"{short_digest(self.ca_digest)}): get a token from this cluster "
                          "with `shoal swarm join-token worker|manager`")
        given = parsed.secret.encode()
        # Both comparisons always run: which one matched must not show in the timing.
        is_worker = hmac.compare_digest(given, self._secrets[WORKER].encode())
        is_manager = hmac.compare_digest(given, self._secrets[MANAGER].encode())
        if is_worker:
            return WORKER
        if is_manager:
            return MANAGER
        raise TokenRefused("join token refused: it is not this cluster's current worker or "
                           "manager token (it may have been rotated; `shoal swarm join-token "
                           "worker|manager` prints the current one)")

    def to_dict(self) -> dict[str, str]:
        """Docker's Cluster.JoinTokens shape; what the store keeps."""
        return {"Worker": self.token(WORKER), "Manager": self.token(MANAGER)}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> JoinTokens:
        worker, manager = JoinToken.parse(data["Worker"]), JoinToken.parse(data["Manager"])
        if worker.ca_digest != manager.ca_digest:
            raise MalformedToken("stored worker and manager join tokens name different CAs")
        return cls(worker.ca_digest, worker.secret, manager.secret)

    def __repr__(self) -> str:
        return f"JoinTokens(ca_digest={self.ca_digest!r}, secrets=<hidden>)"
