"""TLS for the server: the PEM files, checked before gRPC sees them.

gRPC reports a certificate or key it cannot use only as a failure to bind the port,
and a missing file would surface as a traceback; here each file is read and parsed
(with Python's ``ssl``) first, so the error names the file and what is wrong with it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class TLSConfig:
    """PEM files for TLS; ``client_ca`` set = clients must present a certificate it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        """gRPC credentials from the files; ValueError naming the file that is unusable."""
        chain = [(_read("private key", self.key), _read("certificate", self.cert))]
        _check_certificates("certificate", self.cert)
        _check_key(self.cert, self.key)
        if self.client_ca is None:
            return grpc.ssl_server_credentials(chain)
        ca = _read("client CA", self.client_ca)
        _check_certificates("client CA", self.client_ca)
        return grpc.ssl_server_credentials(chain, root_certificates=ca, require_client_auth=True)


class _EncryptedKey(Exception):
    """OpenSSL asked for a pass phrase: the key is encrypted."""


def _ask_pass_phrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal; gRPC takes no pass
    # phrase, so an encrypted key cannot be served anyway.
    raise _EncryptedKey


def _read(what: str, path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"TLS {what} {path}: {exc.strerror or exc}") from None


def _check_certificates(what: str, path: Path) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=str(path))
    except ssl.SSLError:
        raise ValueError(f"TLS {what} {path}: no PEM certificate in it") from None


def _check_key(cert: Path, key: Path) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            str(cert), str(key), password=_ask_pass_phrase
        )
    except _EncryptedKey:
        raise ValueError(
            f"TLS private key {key}: encrypted; gRPC needs an unencrypted PEM key"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"TLS private key {key} does not match certificate {cert}") from None
        raise ValueError(f"TLS private key {key}: not a PEM private key") from None
