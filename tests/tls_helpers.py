"""Real certificates for TLS tests: a CA and the server and client certificates it signs.

Made with ``cryptography`` (already a dependency, for package signatures) rather than
``trustme``: the tests need client certificates with chosen subject CNs, their DER (for
fingerprints and public-key pins) and a second, untrusted CA - a few lines here, and no
new package to lock while other branches lock theirs. P-256 keys: quick to generate.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nyxplug.serving.security import PeerCertificate


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as PEM files, and what an access list can name it by."""

    cert: Path
    key: Path
    der: bytes

    @property
    def names(self) -> PeerCertificate:
        return PeerCertificate.from_der(self.der)


class Pki:
    """A certificate authority whose files live in ``folder``."""

    def __init__(self, folder: Path, name: str = "nyxplug test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )  # fmt: skip
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self._cert = cert
        self.ca = folder / "ca.pem"
        self.ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def server(self, host: str = "localhost") -> Issued:
        """A server certificate for ``localhost`` and 127.0.0.1."""
        names = [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        return self._issue(host, ExtendedKeyUsageOID.SERVER_AUTH, names)

    def client(self, cn: str) -> Issued:
        """A client certificate whose subject CN is ``cn``."""
        return self._issue(cn, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def _issue(
        self, cn: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        stem = self.folder / cn.replace("/", "_")
        cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return Issued(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER))
