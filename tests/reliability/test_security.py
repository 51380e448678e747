"""Security: loopback by default, TLS and mutual TLS, bearer tokens (rotation, files,
environment, admin, health exemption), no pickles, no paths outside the repository."""

from __future__ import annotations

import argparse
import logging
import os
import pickle
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import Pki
from grpc_health.v1 import health_pb2, health_pb2_grpc
from models import AFFINE_IO, Affine, write_model

from conveyor.client import (
    Client,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from conveyor.engine.auth import UNAUTHENTICATED_MESSAGE, AuthConfig
from conveyor.engine.server import Server, TLSConfig

X = np.zeros((1, 4), np.float32)


def test_binds_loopback_by_default_and_warns_on_open_non_loopback(repo: Path) -> None:
    from conveyor.cli import build_parser
    from conveyor.config import resolve

    args = resolve(build_parser(), ["serve", "--model-repository", str(repo)], environ={})
    assert args.host == "127.0.0.1"
    with Server(repo, port=0) as server:
        assert server.address.startswith("127.0.0.1:")
    # Our own handler: the CLI tests may have set the conveyor loggers not to propagate.
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("conveyor.engine.server")
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        # Constructing is enough to check the warning (tests never bind a public address).
        Server(repo, host="127.0.0.1")
        Server(repo, host="localhost")
        assert not records
        Server(repo, host="0.0.0.0")
        assert "without TLS or auth tokens" in records[-1].getMessage()
        Server(repo, host="0.0.0.0", auth_token="t")
        assert "without TLS:" in records[-1].getMessage()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_tls_and_mutual_tls(repo: Path, pki: Pki) -> None:
    tls = TLSConfig(pki.server_cert, pki.server_key)
    with Server(repo, port=0, tls=tls) as server:
        address = f"localhost:{server.port}"
        with Client(address, root_certificates=pki.ca, timeout=10) as client:
            assert client.infer("affine", X)["y"].tolist() == [[1.0] * 4]
        with Client(address, timeout=3, retries=0) as plain, pytest.raises(UnavailableError):
            plain.is_server_live()  # plaintext against a TLS port
    mtls = TLSConfig(pki.server_cert, pki.server_key, client_ca=pki.ca)
    with Server(repo, port=0, tls=mtls) as server:
        address = f"localhost:{server.port}"
        trusted = Client(
            address,
            root_certificates=pki.ca,
            private_key=pki.client_key,
            certificate_chain=pki.client_cert,
            timeout=10,
        )
        with trusted:
            assert client_infers(trusted)
        for key, cert in ((None, None), (pki.rogue_key, pki.rogue_cert)):
            with (
                Client(
                    address,
                    root_certificates=pki.ca,
                    private_key=key,
                    certificate_chain=cert,
                    timeout=3,
                    retries=0,
                ) as client,
                pytest.raises(UnavailableError),
            ):
                client.is_server_live()


def client_infers(client: Client) -> bool:
    return client.infer("affine", X)["y"].shape == (1, 4)


def test_rotated_tokens_and_one_answer_for_every_bad_token(repo: Path) -> None:
    with Server(repo, port=0, auth=AuthConfig(tokens=("old-token", "new-token"))) as server:
        for token in ("old-token", "new-token"):
            with Client(server.address, token=token, timeout=10) as client:
                assert client_infers(client)
        details = set()
        # (An empty token is refused by the client itself: see test_client.py.)
        for token in (None, "old", "old-token-x", "new-tokeN", "x" * 4096):
            with Client(server.address, token=token, timeout=10) as client:
                with pytest.raises(UnauthenticatedError) as info:
                    client.infer("affine", X)
                details.add(info.value.details)
                with pytest.raises(UnauthenticatedError):
                    client.is_server_ready()  # health is protected by default
        assert details == {UNAUTHENTICATED_MESSAGE}  # nothing tells which token exists
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for metadata in (
                (),
                (("authorization", "Basic b2xkLXRva2Vu"),),
                (("authorization", "Bearer"),),  # an empty bearer token
            ):
                with pytest.raises(grpc.RpcError) as err:
                    health.Check(health_pb2.HealthCheckRequest(), timeout=10, metadata=metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_exemption_and_admin_tokens(tmp_path: Path) -> None:
    write_model(tmp_path, "affine", 1, Affine(), AFFINE_IO)
    auth = AuthConfig(tokens=("user",), admin_tokens=("admin",), exempt_health=True)
    with Server(tmp_path, port=0, model_control="explicit", auth=auth) as server:
        with Client(server.address, timeout=10) as anonymous:
            assert anonymous.is_server_live() and anonymous.is_server_ready()
            with grpc.insecure_channel(server.address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(UnauthenticatedError):
                anonymous.load_model("affine")
        user = Client(server.address, token="user", timeout=10)
        with user, pytest.raises(PermissionDeniedError):
            user.load_model("affine")
        with Client(server.address, token="admin", timeout=10) as admin:
            admin.load_model("affine")
            assert client_infers(admin)  # an admin token also works for inference
        with Client(server.address, token="user", timeout=10) as user:
            assert client_infers(user)
            with pytest.raises(PermissionDeniedError):
                user.unload_model("affine")
            assert user.is_model_ready("affine")


def test_tokens_from_files_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.cli import build_parser
    from conveyor.config import resolve
    from conveyor.engine.cli import _server_kwargs

    tokens = tmp_path / "tokens"
    tokens.write_text("# rotated 2026-11\nfile-a\n\nfile-b\n")
    admin = tmp_path / "admin"
    admin.write_text("file-admin\n")
    monkeypatch.setenv("CONVEYOR_AUTH_TOKEN", "env-a, env-b")
    argv = ["serve", "--model-repository", str(tmp_path), "--auth-token-file", str(tokens),
            "--admin-token-file", str(admin)]  # fmt: skip
    args: argparse.Namespace = resolve(build_parser(), argv)
    auth = _server_kwargs(args)["auth"]
    assert auth.tokens == ("env-a", "env-b", "file-a", "file-b")
    assert auth.admin_tokens == ("file-admin",) and not auth.exempt_health
    os.chmod(admin, 0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(Exception, match="token file"):
            _server_kwargs(resolve(build_parser(), argv))
    os.chmod(admin, 0o600)
    admin.write_bytes(b"\xff\xfeadmin\n")  # UTF-16's mark: a traceback, not an error
    with pytest.raises(Exception, match=r"token file .*admin: not UTF-8 text \(byte 0: 0xff\)"):
        _server_kwargs(resolve(build_parser(), argv))


def test_tokens_that_would_open_or_lock_the_server_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.cli import build_parser
    from conveyor.config import resolve
    from conveyor.engine.auth import AuthConfigError, read_token_file
    from conveyor.engine.cli import ServeError, _server_kwargs

    def kwargs(*flags: str) -> dict:
        argv = ["serve", "--model-repository", str(tmp_path), *flags]
        return _server_kwargs(resolve(build_parser(), argv))

    # Set but empty (a secret that was not mounted) must not serve without a token.
    monkeypatch.setenv("CONVEYOR_AUTH_TOKEN", "")
    with pytest.raises(ServeError, match="CONVEYOR_AUTH_TOKEN is set but holds no token"):
        kwargs()
    monkeypatch.delenv("CONVEYOR_AUTH_TOKEN")
    for value in (",", " ", " , "):
        with pytest.raises(ServeError, match="holds no token"):
            kwargs("--auth-token", value)
    with pytest.raises(ServeError, match="--admin-token"):
        kwargs("--admin-token", ",")
    # A token no client can send (not printable ASCII) is refused, not a locked server;
    # the message names the position, never the token.
    with pytest.raises(ServeError, match="token 2: character 2 is") as info:
        kwargs("--auth-token", "ok,pässwörd")
    assert "pässwörd" not in str(info.value)
    with pytest.raises(AuthConfigError, match="printable ASCII"):
        AuthConfig(tokens=("tab\tinside",))
    # An indented comment in a token file is a comment, not a token.
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-1\n  # old-token\n\t# older\n")
    assert read_token_file(tokens) == ("tok-1",)
    tokens.write_text("tok-1\ntök-2\n")
    with pytest.raises(AuthConfigError, match=r"tokens: line 2: character 2 is 'ö'"):
        read_token_file(tokens)


def test_pickles_are_never_loaded_and_paths_outside_the_root_are_refused(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    version = write_model(repo, "pickled", 1, Affine(), AFFINE_IO)
    marker = tmp_path / "unpickled"
    # A pickle that would create `marker` if anything unpickled it.
    payload = pickle.dumps(_Trap(str(marker)))
    (version / "model.pkl").write_bytes(payload)
    outside = write_model(tmp_path / "elsewhere", "escaped", 1, Affine(), AFFINE_IO).parent
    (repo / "escaped").symlink_to(outside, target_is_directory=True)
    write_model(repo, "affine", 1, Affine(), AFFINE_IO)
    server = Server(repo, port=0, model_control="explicit")
    with server, Client(server.address, timeout=10) as client:
        with pytest.raises(Exception, match="never pickles"):
            client.load_model("pickled")
        with pytest.raises(Exception, match="outside the model repository"):
            client.load_model("escaped")
        with pytest.raises(Exception, match="no paths"):
            client.load_model("../elsewhere")
        client.load_model("affine")
        assert client_infers(client)
    assert not marker.exists()


class _Trap:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.path),))
