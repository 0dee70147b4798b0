"""A fleet's certificate authority and credentials: certificates, the CRL, mosquitto passwords.

Everything here is a function of its inputs (plus fresh randomness for keys, serials and salts)
returning PEM bytes or text; reading and writing the fleet folder is ``fleetdir.py``'s job.
Keys are EC P-256 (ECDSA with SHA-256): OpenSSL and so mosquitto, paho and Python's ``ssl`` accept
them everywhere, and they are small and fast on a Raspberry Pi. (Ed25519 certificates need
OpenSSL 1.1.1+ on both ends and TLS 1.3 clients that offer it; P-256 is the safe choice.)

``cryptography`` is imported lazily, so importing this module costs nothing on a device; a missing
package is a :class:`~edgeagent.errors.ConfigError` naming the extra to install.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

#: CA lifetime, days. The CRL's next update is set to the CA's expiry: an expired CRL would make
#: mosquitto refuse every client, and the CRL is rewritten on every revocation anyway.
CA_DAYS = 3650
#: Broker and identity certificate lifetime, days (re-enrol to renew).
LEAF_DAYS = 825

#: mosquitto 2's password hash: ``$7$`` is PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte hash,
#: base64 (standard alphabet, padded), 101 iterations (``mosquitto_passwd``'s default).
PASSWORD_ITERATIONS = 101
_SALT_LEN = 12


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key, PEM."""

    cert_pem: bytes
    key_pem: bytes
    serial: int


def _crypto() -> Any:
    try:
        import cryptography
    except ImportError:
        raise ConfigError(
            "the fleet's certificate authority needs the 'cryptography' package: "
            "pip install 'edgeagent[deploy]' (or pip install cryptography)"
        ) from None
    return cryptography


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, fleet: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"edgeagent fleet {fleet}"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def load_ca(cert_pem: bytes, key_pem: bytes) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Parse the CA's certificate and key; ConfigError if they are not a P-256 pair."""
    _crypto()
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise ConfigError(f"cannot read the fleet CA: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the fleet CA key is not an EC key")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or (
        public.public_numbers() != key.public_key().public_numbers()
    ):
        raise ConfigError("the fleet CA certificate and key do not match")
    return cert, key


def make_ca(fleet: str) -> Issued:
    """A self-signed CA for ``fleet`` (may sign certificates and CRLs, no intermediates)."""
    _crypto()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _new_key()
    name = _name(f"edgeagent fleet CA ({fleet})", fleet)
    now = _now()
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(_cert_pem(cert), _key_pem(key), serial)


def _leaf(
    ca_pem: bytes,
    ca_key_pem: bytes,
    common_name: str,
    fleet: str,
    *,
    server_names: list[str] | None = None,
) -> Issued:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert, ca_key = load_ca(ca_pem, ca_key_pem)
    key = _new_key()
    now = _now()
    serial = x509.random_serial_number()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, fleet))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in server_names]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(_cert_pem(cert), _key_pem(key), serial)


def _general_name(host: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def check_host(host: str) -> str:
    """Return ``host`` if it can be a broker name in a certificate (DNS name or IP), else raise."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    ok = bool(host) and len(host) <= 253
    for label in labels:
        ok = ok and 0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
        ok = ok and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
    if not ok:
        raise ConfigError(f"invalid broker host name {host!r}: use a DNS name or an IP address")
    return host


def issue_server(ca_pem: bytes, ca_key_pem: bytes, fleet: str, hosts: list[str]) -> Issued:
    """The broker's certificate: CN the first host, every host as a SAN (DNS or IP)."""
    if not hosts:
        raise ConfigError("the broker certificate needs at least one host name or IP")
    for h in hosts:
        check_host(h)
    return _leaf(ca_pem, ca_key_pem, hosts[0], fleet, server_names=hosts)


def issue_client(ca_pem: bytes, ca_key_pem: bytes, fleet: str, name: str) -> Issued:
    """A client certificate whose CN is the identity ``name`` (the broker's username for it)."""
    return _leaf(ca_pem, ca_key_pem, name, fleet)


def make_crl(ca_pem: bytes, ca_key_pem: bytes, revoked: dict[int, float]) -> bytes:
    """A CRL (PEM) listing ``revoked`` serials (serial -> Unix time of revocation)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca_cert, ca_key = load_ca(ca_pem, ca_key_pem)
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(max(ca_cert.not_valid_after_utc, now + dt.timedelta(days=1)))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    for serial, when in sorted(revoked.items()):
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(dt.datetime.fromtimestamp(int(when), dt.UTC))
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def cert_serial(cert_pem: bytes) -> int:
    _crypto()
    from cryptography import x509

    return int(x509.load_pem_x509_certificate(cert_pem).serial_number)


# --------------------------------------------------------------------------------------------
# mosquitto passwords (standard library only)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The ``$7$…`` hash mosquitto 2 reads from a password file (after ``username:``)."""
    salt = os.urandom(_SALT_LEN) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PASSWORD_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${PASSWORD_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash (as :func:`hash_password` writes)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    salt, want = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
    return got == want


def new_password() -> str:
    """A random password (about 190 bits, URL-safe, no ':' so it fits a password file)."""
    return base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
