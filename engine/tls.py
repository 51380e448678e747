"""TLS for the server: the PEM files, checked before gRPC sees them.

gRPC reports a certificate or key it cannot use only as a failure to bind the port,
and a missing file would surface as a traceback; here each file is read and parsed
(with Python's ``ssl``) first, so the error names the file and what is wrong with it.
A server certificate that is expired or not yet valid is refused too: gRPC serves it,
and every client then fails its handshake.
"""

from __future__ import annotations

import ssl
import time
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
        _check_dates(self.cert)
        _check_key(self.cert, self.key)
        if self.client_ca is None:
            return grpc.ssl_server_credentials(chain)
        ca = _read("client CA", self.client_ca)
        _check_certificates("client CA", self.client_ca)
        # An expired CA refuses every client certificate at the handshake, while the
        # server started as if all were well.
        _check_dates(self.client_ca, role="client CA")
        return grpc.ssl_server_credentials(chain, root_certificates=ca, require_client_auth=True)


class CertificateDatesError(ValueError):
    """The server certificate is expired or not yet valid: every client's handshake would
    fail, while the server started as if all were well. ``path`` and ``problem`` let the
    CLI name its flag."""

    def __init__(self, path: Path, problem: str, role: str = "certificate") -> None:
        super().__init__(f"TLS {role} {path}: {problem}")
        self.path = path
        self.problem = problem
        self.role = role  # "certificate" (--tls-cert) or "client CA" (--tls-client-ca)


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


def _check_dates(cert: Path, now: float | None = None, role: str = "certificate") -> None:
    """CertificateDatesError unless ``now`` (epoch seconds; default: the clock) lies within
    the validity of the first certificate in ``cert`` (the server's own).

    Python's ``ssl`` decodes it (``_test_decode_cert``, the decoder behind
    ``getpeercert``; the ``cryptography`` package is no runtime dependency). An
    interpreter without it skips the check: the handshakes then show the problem.
    """
    decode = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    if decode is None:
        return
    try:
        decoded = decode(str(cert))
        not_before = ssl.cert_time_to_seconds(decoded["notBefore"])
        not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
    except (ssl.SSLError, KeyError, ValueError):  # parsed already: dates it cannot read
        return
    now = time.time() if now is None else now
    valid = f"valid from {_utc(not_before)} to {_utc(not_after)}"
    if now > not_after:
        raise CertificateDatesError(cert, f"expired: {valid}", role)
    if now < not_before:
        raise CertificateDatesError(cert, f"not yet valid: {valid}", role)


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


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
        weak = _WEAK.get(exc.reason or "")
        if weak is not None:  # valid PEM that OpenSSL's security level refuses
            raise ValueError(f"TLS certificate {cert}: {weak}") from None
        raise ValueError(f"TLS private key {key}: not a PEM private key") from None


# OpenSSL refusals of valid PEM files by its security level: what to do about each.
_WEAK = {
    "EE_KEY_TOO_SMALL": "its key is too small for OpenSSL's security level (RSA under "
    "2048 bits); use an RSA key of 2048 bits or more, or an EC key",
    "CA_MD_TOO_WEAK": "signed with a digest too weak for OpenSSL's security level (SHA-1 "
    "or MD5); re-sign it with SHA-256",
}
