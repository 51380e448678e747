"""``conveyor serve`` TLS options: a misconfiguration is one clear line and exit status 1,
never plaintext serving, a traceback or a wrong guess at the cause."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
from cli_server import FAULTHANDLER_ENV
from models import VERSION_IO, Version, write_model

from conveyor.engine.server import Server, ServerError
from conveyor.engine.tls import TLSConfig


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "m", 1, Version(1), VERSION_IO)
    return root


def _serve(repo: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``conveyor serve`` expected to fail at start (bounded: it would otherwise serve)."""
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "serve", "--model-repository", str(repo),
         "--port", "0", "--metrics-port", "-1", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        env=FAULTHANDLER_ENV,
    )  # fmt: skip


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("conveyor: error:")]


def test_a_client_ca_without_a_server_certificate_is_refused(repo: Path, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("refused before it is read\n")
    result = _serve(repo, "--tls-client-ca", str(ca))
    assert result.returncode == 1, result.stderr
    assert _error_lines(result) == [
        "conveyor: error: --tls-client-ca (mutual TLS) needs --tls-cert and --tls-key"
    ]


def _key_and_certificate(
    directory: Path,
    name: str,
    passphrase: bytes | None = None,
    valid: tuple[datetime.datetime, datetime.datetime] | None = None,
) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and its key (PEM; encrypted with ``passphrase``),
    valid from 5 minutes ago for a day unless ``valid`` (not before, not after) says."""

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0] if valid else now - datetime.timedelta(minutes=5))
        .not_valid_after(valid[1] if valid else now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pem")
    key, cert = _key_and_certificate(d, "server")
    other_key, _ = _key_and_certificate(d, "other")
    encrypted_key, encrypted_cert = _key_and_certificate(d, "encrypted", b"secret")
    jan, feb = datetime.datetime(2020, 1, 1), datetime.datetime(2020, 2, 1)
    expired_key, expired_cert = _key_and_certificate(d, "expired", valid=(jan, feb))
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    soon = now + datetime.timedelta(days=1)  # valid from tomorrow
    future = soon.replace(microsecond=0), datetime.datetime(2099, 1, 1)
    future_key, future_cert = _key_and_certificate(d, "future", valid=future)
    garbage = d / "garbage.pem"
    garbage.write_text("not a pem\n")
    return dict(
        key=key, cert=cert, other_key=other_key, encrypted_key=encrypted_key,
        encrypted_cert=encrypted_cert, garbage=garbage, missing=d / "missing.pem",
        expired_key=expired_key, expired_cert=expired_cert, future_key=future_key,
        future_cert=future_cert, future_start=f"{future[0]:%Y-%m-%d %H:%M:%S} UTC",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("cert", "key", "client_ca", "message"),
    [
        ("missing", "key", None, "TLS certificate {missing}: No such file or directory"),
        ("cert", "missing", None, "TLS private key {missing}: No such file or directory"),
        ("garbage", "garbage", None, "TLS certificate {garbage}: no PEM certificate in it"),
        ("key", "key", None, "TLS certificate {key}: no PEM certificate in it"),
        ("cert", "garbage", None, "TLS private key {garbage}: not a PEM private key"),
        ("cert", "other_key", None,
         "TLS private key {other_key} does not match certificate {cert}"),
        ("encrypted_cert", "encrypted_key", None,
         "TLS private key {encrypted_key}: encrypted; gRPC needs an unencrypted PEM key"),
        ("cert", "key", "garbage", "TLS client CA {garbage}: no PEM certificate in it"),
        ("cert", "key", "missing", "TLS client CA {missing}: No such file or directory"),
        # Served before, and every client's handshake failed.
        ("expired_cert", "expired_key", None, "--tls-cert {expired_cert}: expired: valid from "
         "2020-01-01 00:00:00 UTC to 2020-02-01 00:00:00 UTC"),
        ("future_cert", "future_key", None, "--tls-cert {future_cert}: not yet valid: valid "
         "from {future_start} to 2099-01-01 00:00:00 UTC"),
        # Accepted before, and every client certificate was refused at the handshake.
        ("cert", "key", "expired_cert", "--tls-client-ca {expired_cert}: expired: valid from "
         "2020-01-01 00:00:00 UTC to 2020-02-01 00:00:00 UTC"),
    ],
)  # fmt: skip
def test_an_unusable_tls_file_is_one_line_naming_it(
    repo: Path, pem: dict[str, Path], cert: str, key: str, client_ca: str | None, message: str
) -> None:
    flags = ["--tls-cert", str(pem[cert]), "--tls-key", str(pem[key])]
    if client_ca:
        flags += ["--tls-client-ca", str(pem[client_ca])]
    result = _serve(repo, *flags)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == ["conveyor: error: " + message.format(**pem)]


@pytest.mark.parametrize(
    ("flags", "env", "source"),
    [
        (["--tls-client-ca", ""], {}, "--tls-client-ca / CONVEYOR_TLS_CLIENT_CA"),
        ([], {"CONVEYOR_TLS_CLIENT_CA": ""}, "--tls-client-ca / CONVEYOR_TLS_CLIENT_CA"),
        ([], {"CONVEYOR_TLS_CERT": "", "CONVEYOR_TLS_KEY": ""}, "--tls-cert / CONVEYOR_TLS_CERT"),
        ([], {"CONVEYOR_AUTH_TOKEN_FILE": ""}, "--auth-token-file / CONVEYOR_AUTH_TOKEN_FILE"),
        (["--admin-token-file", " "], {}, "--admin-token-file / CONVEYOR_ADMIN_TOKEN_FILE"),
    ],
)
def test_a_tls_or_token_file_setting_that_is_set_but_empty_is_refused(
    repo: Path, pem: dict[str, Path], flags: list[str], env: dict[str, str], source: str
) -> None:
    # Taken as "not given": TLS without client certificates (an unset $CA), plaintext, or
    # an open server (an unmounted token-file secret), without a word.
    if "CONVEYOR_TLS_CLIENT_CA" in env or "--tls-client-ca" in flags:
        flags = ["--tls-cert", str(pem["cert"]), "--tls-key", str(pem["key"]), *flags]
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "serve", "--model-repository", str(repo),
         "--port", "0", "--metrics-port", "-1", *flags],
        capture_output=True, text=True, timeout=60, env={**FAULTHANDLER_ENV, **env},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    (line,) = _error_lines(result)
    assert line.startswith(f"conveyor: error: {source} is set but empty; give a file")


def test_the_embedded_server_reports_an_unusable_tls_file(repo: Path, pem: dict[str, Path]) -> None:
    tls = TLSConfig(pem["garbage"], pem["key"])
    with pytest.raises(ServerError, match=r"^TLS certificate .*garbage\.pem: no PEM certificate"):
        Server(repo, port=0, tls=tls).start()
    tls = TLSConfig(pem["expired_cert"], pem["expired_key"])
    with pytest.raises(ServerError, match=r"^TLS certificate .*expired\.crt: expired: valid from"):
        Server(repo, port=0, tls=tls).start()
    # The files that make it fail are fine: a good pair serves.
    with Server(repo, port=0, tls=TLSConfig(pem["cert"], pem["key"])) as server:
        assert server.port


def test_drift_reads_a_tls_server_with_the_servers_rotating_tokens(
    repo: Path, pem: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # `conveyor drift` had no TLS flags, sent CONVEYOR_AUTH_TOKEN's "a,b" (the server's
    # rotation list) as one token, and a token no client can send was a traceback.
    from conveyor.cli import main
    from conveyor.engine.auth import AuthConfig

    auth = AuthConfig(tokens=("tok-a", "tok-b"))
    with Server(repo, port=0, tls=TLSConfig(pem["cert"], pem["key"]), auth=auth) as server:
        target = ["drift", "--target", f"localhost:{server.port}", "--model", "m"]
        tls = ["--tls-ca", str(pem["cert"])]
        assert main([*target, *tls, "--auth-token", "tok-b,tok-a"]) == 1
        # The server answered (the model simply tracks no drift): TLS and token held.
        assert "model 'm': no drift tracked" in capsys.readouterr().err
        assert main([*target, "--auth-token", "tok-a"]) == 1  # plaintext against TLS
        assert "UNAVAILABLE" in capsys.readouterr().err
        assert main([*target, *tls, "--auth-token", "tok-\u00e9"]) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("conveyor: error: token: ")
