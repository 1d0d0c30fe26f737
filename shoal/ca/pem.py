"""Reading and writing certificates, keys and CSRs: PEM in, PEM out, private files 0600.

Functions that take a certificate or key accept the object, PEM (bytes or str) or a path, so
callers hold whichever they have. Files are written whole or not at all (a temporary file in
the same directory, fsynced, then renamed over), and a private file is created 0600 from the
first byte, never chmodded afterwards.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.ca.errors import CAStoreError, MalformedRequest

PathLike: TypeAlias = "str | os.PathLike[str]"
CertSource: TypeAlias = "x509.Certificate | bytes | PathLike"
KeySource: TypeAlias = "ec.EllipticCurvePrivateKey | bytes | PathLike"

MAX_PEM = 64 << 10  # no certificate or CSR of ours comes near this


def _read(src: bytes | PathLike, what: str) -> bytes:
    if isinstance(src, bytes):
        return src
    if isinstance(src, str) and src.lstrip().startswith("-----BEGIN"):
        return src.encode()
    try:
        return Path(src).read_bytes()
    except OSError as exc:
        raise CAStoreError(f"cannot read {what} {os.fspath(src)}: {exc.strerror}") from exc


def load_cert(src: CertSource, what: str = "certificate") -> x509.Certificate:
    if isinstance(src, x509.Certificate):
        return src
    data = _read(src, what)
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise MalformedRequest(f"{what} is not a valid X.509 certificate: {exc}") from exc


def load_key(src: KeySource, what: str = "private key") -> ec.EllipticCurvePrivateKey:
    if isinstance(src, ec.EllipticCurvePrivateKey):
        return src
    data = _read(src, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CAStoreError(f"{what} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAStoreError(f"{what} is a {type(key).__name__}, shoal uses ECDSA P-256 keys")
    return key


def load_csr(data: bytes | str) -> x509.CertificateSigningRequest:
    """A CSR from the network: PEM, size-limited, its self-signature checked."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_PEM:
        raise MalformedRequest(f"certificate signing request too large ({len(raw)} bytes)")
    try:
        csr = x509.load_pem_x509_csr(raw)
    except ValueError as exc:
        raise MalformedRequest(f"not a PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise MalformedRequest("certificate signing request: its signature does not verify")
    key = csr.public_key()
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise MalformedRequest(
            "certificate signing request: the key must be ECDSA P-256 "
            f"(got {type(key).__name__.lstrip('_')})")
    return csr


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` atomically; the file has `mode` from its creation."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits of a public file's mode away
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def private_dir(path: Path) -> None:
    """Create `path` (and parents) with the last component 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def check_private(path: Path) -> None:
    """Refuse a key file others can read, as ssh does: the key would no longer be secret."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise CAStoreError(f"cannot read {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise CAStoreError(f"{path} is readable by others (mode {mode:04o}): "
                           f"run `chmod 600 {path}` if it was not exposed, else rotate it")
