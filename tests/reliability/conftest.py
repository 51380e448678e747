"""Reliability fixtures: certificates made in the test, small model repositories."""

from __future__ import annotations

import datetime
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).parent
# The engine's tiny TorchScript models and the trainer's dataset helpers.
sys.path.insert(0, str(HERE.parent / "engine"))
sys.path.insert(0, str(HERE.parent / "trainer"))

from models import AFFINE_IO, Affine, write_model  # noqa: E402


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for localhost/127.0.0.1, and client certificates
    signed by the CA (``client_*``) and by an unrelated CA (``rogue_*``)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject_cn: str, key, issuer_cn: str, issuer_key, *, ca: bool, san: bool = False):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, cert, key) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, rogue_ca_key = _key(), _key()
    ca = _cert("conveyor test CA", ca_key, "conveyor test CA", ca_key, ca=True)
    ca_path, _ = _write(d, "ca", ca, ca_key)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    server = _cert("localhost", server_key, "conveyor test CA", ca_key, ca=False, san=True)
    client = _cert("client", client_key, "conveyor test CA", ca_key, ca=False)
    rogue = _cert("client", rogue_key, "rogue CA", rogue_ca_key, ca=False)
    server_cert, server_key_path = _write(d, "server", server, server_key)
    client_cert, client_key_path = _write(d, "client", client, client_key)
    rogue_cert, rogue_key_path = _write(d, "rogue", rogue, rogue_key)
    return Pki(
        ca_path, server_cert, server_key_path, client_cert, client_key_path, rogue_cert,
        rogue_key_path,
    )  # fmt: skip


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "affine", 1, Affine(), AFFINE_IO, max_batch_size=8)
    return root


class Gate:
    """Holds calls of the model named ``gated`` (while armed) until released; counts entries."""

    def __init__(self) -> None:
        import threading

        self.armed = False
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.hang_rows_equal: float | None = None  # only rows whose x[0, 0] equals this hang

    def should_hold(self, name: str, inputs: list) -> bool:
        if name != "gated" or not self.armed:
            return False
        return self.hang_rows_equal is None or float(inputs[0][0, 0]) == self.hang_rows_equal


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Gate:
    """Patches Model.run (the server runs in this process) so the model ``gated`` can hang."""
    from conveyor.engine.model import Model

    controller = Gate()
    original = Model.run

    def run(self, inputs):  # type: ignore[no-untyped-def]
        if controller.should_hold(self.name, inputs):
            controller.entered.release()
            controller.release.wait(30)  # bounded: a failing test still ends
        return original(self, inputs)

    monkeypatch.setattr(Model, "run", run)
    yield controller
    controller.release.set()
