"""The CA's errors: one root under ShoalError, one subclass per reason a user can act on.

`status` is what the API answers with: 400 for input that can never be right, 401 for a
credential (token, certificate) that is refused, 403 for a verified peer acting beyond its
role. Messages never contain a token's secret.
"""

from __future__ import annotations

from shoal.errors import ShoalError


class CAError(ShoalError):
    """The root of every CA error; itself used for a broken CA on disk."""

    status = 500


class CAStoreError(CAError):
    """Files of a CA or of a node's credentials missing, unreadable, too open, or mismatched."""


class MalformedToken(CAError):
    """Not a join token at all: wrong shape, prefix, version, length or alphabet."""

    status = 400


class TokenRefused(CAError):
    """A well-formed token whose secret is not (or no longer) one of this cluster's."""

    status = 401


class WrongCA(CAError):
    """A token (or a fetched CA) whose CA digest is not the one expected."""

    status = 401


class PinningFailed(WrongCA):
    """The CA a manager presented does not match the digest in the join token."""


class MalformedRequest(CAError):
    """A CSR, certificate or name that cannot be used (bad PEM, bad signature, wrong key type)."""

    status = 400


class InvalidLifetime(MalformedRequest):
    """A certificate lifetime below the minimum (without the test override)."""


class CertificateRefused(CAError):
    """A certificate that does not prove an identity in this cluster; subclasses say why."""

    status = 401


class NoCertificate(CertificateRefused):
    """A peer that presented no certificate, or a plaintext connection."""


class UnknownAuthority(CertificateRefused):
    """Issued by another CA (another cluster, or not a shoal CA at all)."""


class CertificateExpired(CertificateRefused):
    pass


class CertificateNotYetValid(CertificateRefused):
    pass


class CertificateRevoked(CertificateRefused):
    pass


class NotAShoalCertificate(CertificateRefused):
    """Signed by our CA but without the subject shoal puts in its certificates."""


class PermissionDenied(CAError):
    """A verified peer whose role may not do what it asked."""

    status = 403


class ManagerUnreachable(CAError):
    """No answer from the manager's cluster port (down, wrong address, not speaking TLS)."""

    status = 503


class JoinRefused(CAError):
    """The manager answered a join or renewal with an error; `status` is its HTTP status."""

    status = 401

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status
