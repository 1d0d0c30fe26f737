"""The one root error. Each subclass says what kind of thing went wrong; the API maps them
to HTTP statuses, the CLI prints their message."""


class ShoalError(Exception):
    """Something a user can act on. The message says what is wrong."""

    status = 500


class InvalidArgument(ShoalError):
    status = 400


class NotFound(ShoalError):
    status = 404


class Conflict(ShoalError):
    """A name already taken, a stale version, a resource in use."""

    status = 409


class Unavailable(ShoalError):
    """A precondition of the machine: not root, a tool or kernel feature missing."""

    status = 503


class KernelError(ShoalError):
    """A netlink, nft or subprocess failure, converted at the boundary."""

    status = 500


class Forbidden(ShoalError):
    """The caller is known but may not do this (RBAC), or is not known at all."""

    status = 403
