"""The mesh's errors, under shoal's one root."""

from __future__ import annotations

from shoal.errors import InvalidArgument, ShoalError


class MeshError(ShoalError):
    """The mesh process could not start, stopped, or refused a request from the agent."""


class InvalidRoutes(InvalidArgument, MeshError):
    """A routing table the mesh cannot use; the message names the bad entry."""


class HttpError(MeshError):
    """A request (or a backend's response) that breaks HTTP/1.1 framing or the mesh's limits.

    `status` is the response the client gets; the connection is closed after it, because the
    framing of whatever follows is unknown (RFC 9112 section 11, request smuggling)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
