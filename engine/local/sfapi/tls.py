"""Certificates of the local org, generated once per state directory with `cryptography`.

simple-salesforce always speaks HTTPS, so the server needs a certificate the client can be told to
trust: a private CA (`ca.pem`, the file `SF_CA_BUNDLE` points to) signs a server certificate for
127.0.0.1 and localhost. The JWT bearer flow needs a key pair whose certificate is "uploaded to the
connected app": `jwt_key.pem` (the client's private key, `SF_JWT_KEY_FILE`) and `jwt_cert.pem` (what
the server verifies assertions with). Files are reused across restarts so that configured clients
keep working; they are regenerated only when missing or close to expiry.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    jwt_key: Path
    jwt_cert: Path


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _still_valid(path: Path, days: int = 30) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "recon local stack"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_tls(directory: Path) -> TlsFiles:
    """Create (or reuse) the CA, the server certificate and the JWT key pair in `directory`."""
    files = TlsFiles(directory / "ca.pem", directory / "ca.key", directory / "server.pem", directory / "server.key",
                     directory / "jwt_key.pem", directory / "jwt_cert.pem")
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    fresh_ca = False
    if not (files.ca_key.exists() and _still_valid(files.ca_cert, days=60)):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("recon local CA")).issuer_name(_name("recon local CA"))
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(files.ca_key, _pem_key(ca_key), private=True)
        _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
        fresh_ca = True
    if fresh_ca or not (files.server_key.exists() and _still_valid(files.server_cert)):
        ca_key_loaded = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        assert isinstance(ca_key_loaded, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("127.0.0.1")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=825))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key_loaded.public_key()),
                           critical=False)
            .sign(ca_key_loaded, hashes.SHA256())
        )
        _write(files.server_key, _pem_key(key), private=True)
        _write(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    if not (files.jwt_key.exists() and _still_valid(files.jwt_cert)):
        jkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jcert = (
            x509.CertificateBuilder()
            .subject_name(_name("recon connected app")).issuer_name(_name("recon connected app"))
            .public_key(jkey.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
            .sign(jkey, hashes.SHA256())
        )
        _write(files.jwt_key, _pem_key(jkey), private=True)
        _write(files.jwt_cert, jcert.public_bytes(serialization.Encoding.PEM))
    return files
