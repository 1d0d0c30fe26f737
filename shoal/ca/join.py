"""The joining node's side: pin the CA from the token, get a certificate, renew it.

fetch_and_pin: connect to the manager with TLS that verifies nothing, GET /shoal/v1/ca, and
accept the certificate only if its sha256 is the digest in the join token, and only if the
server then passes a handshake verified against it as a manager (SAN swarm-manager). Before
that check nothing received is trusted; after it, every connection verifies the manager
against the pinned CA (swarmkit's GetRemoteCA does the same with its GetRootCACertificate call).

request_join: POST /shoal/v1/join {token, csr[, previous]} over TLS verified against the
pinned CA, as an anonymous client -> the node's certificate.
request_renewal: POST /shoal/v1/renew {csr} over mutual TLS -> a new certificate.
The key never leaves the node: only its CSR does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ssl
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.ca import pem
from shoal.ca.credentials import NodeCredentials
from shoal.ca.errors import (
    CAError,
    CertificateRefused,
    JoinRefused,
    ManagerUnreachable,
    PinningFailed,
)
from shoal.ca.keys import make_csr, new_key
from shoal.ca.names import CA_PATH, JOIN_PATH, MANAGER_SERVER_NAME, RENEW_PATH
from shoal.ca.root import ca_digest
from shoal.ca.tls import client_context, unverified_context
from shoal.ca.tokens import JoinToken, short_digest
from shoal.ca.trust import Trust

TIMEOUT = 10.0


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise CAError(f"manager address {addr!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


async def _check_server(addr: str, ca: x509.Certificate, timeout: float) -> None:
    """A handshake that verifies the server against the pinned CA as a manager: the server
    that served the CA must hold a manager certificate that CA issued."""
    host, port = _split(addr)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=client_context(ca), server_hostname=MANAGER_SERVER_NAME), timeout)
    except ssl.SSLCertVerificationError as exc:
        raise PinningFailed(f"the TLS server at {addr} is not a manager of the CA it served "
                            f"({exc.verify_message}): refused") from exc
    except (OSError, TimeoutError) as exc:
        raise ManagerUnreachable(f"cannot reach the manager at {addr}: "
                                 f"{exc or type(exc).__name__}") from exc
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def fetch_and_pin(addr: str, token: str, *, timeout: float = TIMEOUT) -> x509.Certificate:
    """The cluster CA certificate from the manager at `addr` ("host:port"), if and only if
    it is the one the join token names. Raises MalformedToken, PinningFailed,
    ManagerUnreachable."""
    want = JoinToken.parse(token).ca_digest
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.get(f"https://{addr}{CA_PATH}", ssl=unverified_context()) as resp:
                if resp.status != 200:
                    raise PinningFailed(f"the manager at {addr} answered {resp.status} to "
                                        f"GET {CA_PATH}: is it a shoal manager?")
                body = await resp.content.read(pem.MAX_PEM + 1)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ManagerUnreachable(f"cannot fetch the cluster CA from {addr}: "
                                 f"{exc or type(exc).__name__}") from exc
    if len(body) > pem.MAX_PEM:
        raise PinningFailed(f"the manager at {addr} sent more than a CA certificate")
    try:
        ca = x509.load_pem_x509_certificate(body)
    except ValueError as exc:
        raise PinningFailed(f"the manager at {addr} sent no PEM certificate: {exc}") from exc
    got = ca_digest(ca)
    if not hmac.compare_digest(got, want):
        raise PinningFailed(
            f"the manager at {addr} presented CA {short_digest(got)}, but the join token pins "
            f"{short_digest(want)}: refused (a token of another cluster, or something between "
            "this node and the manager)")
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise PinningFailed(f"the certificate pinned by the token is not a CA ({addr})")
    await _check_server(addr, ca, timeout)
    return ca


async def _post(addr: str, path: str, body: dict[str, Any], ctx: ssl.SSLContext,
                timeout: float) -> dict[str, Any]:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.post(f"https://{addr}{path}", json=body, ssl=ctx,
                                 server_hostname=MANAGER_SERVER_NAME) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = {}
                if resp.status != 200:
                    msg = data.get("message") if isinstance(data, dict) else None
                    raise JoinRefused(f"the manager at {addr} refused {path}: "
                                      f"{msg or resp.reason}", resp.status)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ManagerUnreachable(f"{path} at {addr} failed: {exc or type(exc).__name__}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cert"), str):
        raise JoinRefused(f"the manager at {addr} answered {path} without a certificate", 502)
    return data


def _check_issued(cert_pem: str, key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
                  addr: str) -> x509.Certificate:
    cert = pem.load_cert(cert_pem.encode(), f"certificate from {addr}")
    if cert.public_key() != key.public_key():
        raise CertificateRefused(f"the manager at {addr} returned a certificate for another key")
    Trust(ca).verify(cert)
    return cert


async def request_join(addr: str, token: str, *, key: ec.EllipticCurvePrivateKey | None = None,
                       previous: x509.Certificate | None = None,
                       timeout: float = TIMEOUT) -> NodeCredentials:
    """Join the cluster of the manager at `addr`. With `previous` (this node's old, maybe
    expired certificate) and `key` (its old key) the node keeps its node id."""
    if previous is not None and key is None:
        raise CAError("a rejoin that keeps the node id signs its request with the old key")
    ca = await fetch_and_pin(addr, token, timeout=timeout)
    key = key or new_key()
    body: dict[str, Any] = {"token": token, "csr": make_csr(key).decode()}
    if previous is not None:
        body["previous"] = pem.cert_pem(previous).decode()
    data = await _post(addr, JOIN_PATH, body, client_context(ca), timeout)
    return NodeCredentials(key, _check_issued(data["cert"], key, ca, addr), ca)


async def request_renewal(addr: str, creds: NodeCredentials, *,
                          timeout: float = TIMEOUT) -> NodeCredentials:
    """A fresh key and certificate for the same node, asked over mutual TLS with the current
    ones. The role in the new certificate is the one the manager has for the node now."""
    key = new_key()
    ctx = client_context(creds.ca_cert, creds.cert, creds.key)
    data = await _post(addr, RENEW_PATH, {"csr": make_csr(key).decode()}, ctx, timeout)
    cert = _check_issued(data["cert"], key, creds.ca_cert, addr)
    new = NodeCredentials(key, cert, creds.ca_cert)
    if new.identity.name != creds.identity.name:
        raise CertificateRefused(f"the manager at {addr} renewed {creds.identity} as "
                                 f"{new.identity}")
    return new
