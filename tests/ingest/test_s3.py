"""Reading from an S3 object store (``s3://`` URIs) against a local S3 server (moto, loopback).

Every test compares with the same files read from local disk: remote sources must take the
code path the local tests exercise and give the same rows, plans, quarantines and reports.
"""

import http.server
import json
import logging
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from conveyor.cli import main
from conveyor.ingest.errors import IngestError, SourceError
from conveyor.ingest.loader import StreamLoader
from conveyor.ingest.scan import run_scan
from conveyor.ingest.source import Source
from conveyor.ingest.spec import CategoricalFeature, FeatureSpec, Label, NumericFeature
from conveyor.ingest.split import SplitConfig
from tests.ingest.conftest import write

SPEC = FeatureSpec(
    label=Label("y", "binary", [0, 1]),
    numeric=[NumericFeature("id"), NumericFeature("x", min=-10.0, max=10.0)],
    categorical=[CategoricalFeature("c", vocab=["a", "b"])],
    ignore=["part"],  # the hive partition of the Parquet dataset
)
N = 90
# Rows planted with one problem each (ids), and the rule that must catch them.
BAD = {7: "nan", 13: "null", 40: "range", 41: "unseen_class", 77: "nan"}


def bad_table(lo: int, hi: int) -> pa.Table:
    ids = np.arange(lo, hi)
    x = np.linspace(-1, 1, N)[lo:hi]
    y = ids % 2
    for i, rule in BAD.items():
        if lo <= i < hi and rule == "nan":
            x[i - lo] = np.nan if i == 7 else np.inf
        if lo <= i < hi and rule == "range":
            x[i - lo] = 99.0
        if lo <= i < hi and rule == "unseen_class":
            y[i - lo] = 5
    xs = pa.array(x, mask=ids == 13)
    c = pa.array([["a", "b", "zzz"][i % 3] for i in ids])
    return pa.table({"id": ids.astype(np.float64), "x": xs, "c": c, "y": y})


@pytest.fixture(scope="module")
def server():
    """A moto S3 server on 127.0.0.1 (a free port), stopped at teardown: ``host:port``."""
    from moto.server import ThreadedMotoServer  # the dev extra pins moto[server]

    # One log line per request would bury a failure's own output.
    requests_log = logging.getLogger("werkzeug")
    level = requests_log.level
    requests_log.setLevel(logging.WARNING)
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        yield f"{host}:{port}"
    finally:
        srv.stop()
        requests_log.setLevel(level)


@pytest.fixture
def aws_env(tmp_path, monkeypatch):
    """Dummy credentials in the standard AWS variables, and no profile, config file or
    instance metadata to fall back on."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def s3(server, aws_env, tmp_path):
    """A fresh bucket, and local copies of what it holds. Returns ``(uri, local)``: ``uri(key)``
    is the ``s3://`` URI of a key (or prefix) and ``local(key)`` its local copy."""
    bucket = f"conveyor-{uuid.uuid4().hex[:12]}"
    fs = pafs.S3FileSystem(
        endpoint_override=server, scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    fs.create_dir(bucket)
    root = tmp_path / "local"
    root.mkdir()
    parquet = root / "parquet"
    for part, (lo, hi) in enumerate([(0, 40), (40, 90)]):
        (parquet / f"part={part}").mkdir(parents=True)
        pq.write_table(bad_table(lo, hi), parquet / f"part={part}" / "d.parquet", row_group_size=16)
    pq.write_table(bad_table(0, 1), parquet / "_SUCCESS.parquet")  # hidden: must be skipped
    write(bad_table(0, N), root / "d.csv", "csv")
    pafs.copy_files(str(root), bucket, destination_filesystem=fs)

    def uri(key: str = "") -> str:
        return f"s3://{bucket}/{key}?endpoint_override={server}&scheme=http"

    return uri, lambda key="": str(root / key)


def as_text(table: pa.Table) -> str:
    """The schema and values of ``table``, NaN equal to NaN (unlike ``Table.equals``)."""
    return f"{table.schema}\n{json.dumps(table.to_pydict())}"


def rows_of(source: Source, split: SplitConfig | None = None) -> list[tuple[str, list, str]]:
    """Every piece's file path relative to the source root, row indices and rows."""
    out = []
    for piece in source.pieces():
        chunks = list(source.read(piece, split=split))
        table = pa.Table.from_batches([c.batch for c in chunks], schema=source.schema)
        rows = np.concatenate([c.rows for c in chunks]).tolist()
        out.append((source.relative_path(piece.path), rows, as_text(table)))
    return out


@pytest.mark.parametrize("key", ["parquet/", "parquet", "csv"])
def test_s3_reads_the_same_rows_as_local(s3, key):
    uri, local = s3
    key = "d.csv" if key == "csv" else key
    types = SPEC.declared_types()
    remote, here = Source(uri(key), types=types), Source(local(key), types=types)
    assert isinstance(remote.filesystem, pafs.S3FileSystem)
    assert remote.format == here.format and remote.schema == here.schema
    assert len(remote.files) == (2 if key.startswith("parquet") else 1)
    assert rows_of(remote) == rows_of(here)
    split = SplitConfig(0.3, seed=1, part="val")
    assert rows_of(remote, split) == rows_of(here, split)


def test_s3_glob_with_a_query_string(s3):
    uri, local = s3
    remote = Source(uri("parquet/part=1/*.parquet"))
    assert [remote.relative_path(p) for p in remote.files] == ["d.parquet"]
    assert rows_of(remote) == rows_of(Source(local("parquet/part=1/d.parquet")))


def test_s3_glob_stays_within_one_path_segment(s3):
    # On S3 too, `*` matched across `/`: parquet/*.parquet took both part=N/d.parquet.
    uri, local = s3
    with pytest.raises(SourceError, match="no data files found"):
        Source(uri("parquet/*.parquet"))
    remote, here = Source(uri("parquet/*/d.parquet")), Source(local("parquet/*/d.parquet"))
    assert [remote.relative_path(p) for p in remote.files] == [
        "part=0/d.parquet",
        "part=1/d.parquet",
    ]
    assert rows_of(remote) == rows_of(here)


@pytest.mark.parametrize("key", ["parquet/", "d.csv"])
def test_validation_quarantines_s3_rows_where_configured(s3, tmp_path, key):
    uri, local = s3
    results = {}
    for where, src in (("s3", uri(key)), ("local", local(key))):
        qfile = tmp_path / where / "q.parquet"
        source = Source(src, types=SPEC.declared_types())
        result = run_scan(source, SPEC, quarantine_path=qfile, progress=False)
        acc = result.accounting
        assert acc.rows_in == N == acc.rows_out + acc.rows_quarantined
        assert result.quarantine == qfile and qfile.exists()
        q = pq.read_table(qfile)
        assert q.num_rows == acc.rows_quarantined
        results[where] = (acc.to_dict(), q)
    acc, q = results["s3"]
    assert acc == results["local"][0]
    assert acc["quarantined_by_rule"] == {"nan": 2, "null": 1, "range": 1, "unseen_class": 1}
    got = {int(float(r["id"])): r["_rule"] for r in q.to_pylist()}
    assert got == BAD
    # The quarantine names the object each row came from (bucket/key).
    bucket = uri().split("/")[2]
    assert all(f.startswith(f"{bucket}/") for f in q.column("_file").to_pylist())
    assert as_text(q.drop_columns(["_file"])) == as_text(
        results["local"][1].drop_columns(["_file"])
    )


def batches_of(loader, count: int | None = None) -> list[dict[str, torch.Tensor]]:
    out = []
    it = iter(loader)
    for batch in it:
        out.append({"f": batch.features, "c": batch.categorical, "y": batch.label})
        if count is not None and len(out) == count:
            break
    it.close()
    return out


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for name in x:
            assert torch.equal(x[name], y[name]), name


@pytest.mark.parametrize("key", ["parquet/", "d.csv"])
def test_sharded_loader_over_s3_covers_every_row_once_and_resumes(s3, tmp_path, key):
    uri, local = s3
    kw = dict(batch_size=8, world_size=2, shuffle=True, shuffle_buffer=16, prefetch=2)
    seen = []
    for rank in range(2):
        qdir = tmp_path / f"q{rank}"
        remote = StreamLoader(uri(key), SPEC, rank=rank, quarantine=str(qdir), **kw)
        here = StreamLoader(local(key), SPEC, rank=rank, **kw)
        assert remote.counts == here.counts and len(remote) == len(here)
        whole = batches_of(remote)
        assert_same(whole, batches_of(here))
        seen += [int(v) for b in whole for v in b["f"][:, 0].tolist()]
        acc = remote.epoch_accounting[0]
        assert acc.rows_in == remote.plan(0).rows == acc.rows_out + acc.rows_quarantined
        (qfile,) = qdir.glob(f"epoch0000-rank{rank:05d}-from00000000.parquet")
        assert pq.read_table(qfile).num_rows == acc.rows_quarantined > 0
        # Stop mid-epoch, resume in a new loader from the saved state: exactly the rest.
        cut = len(whole) // 2
        first = StreamLoader(uri(key), SPEC, rank=rank, **kw)
        assert_same(batches_of(first, cut), whole[:cut])
        state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would keep it
        resumed = StreamLoader(uri(key), SPEC, rank=rank, **kw)
        resumed.load_state_dict(state)
        assert_same(batches_of(resumed), whole[cut:])
        assert resumed.epoch_accounting[0].to_dict() == acc.to_dict()
    assert sorted(seen) == sorted(set(range(N)) - set(BAD))


def test_cli_profile_and_validate_accept_s3(s3, tmp_path, capsys):
    uri, local = s3
    reports = {}
    for where, src in (("s3", uri("parquet/")), ("local", local("parquet/"))):
        out = tmp_path / where
        args = ["ingest", "profile", src, "--label", "y", "--out", str(out / "profile")]
        assert main([*args, "--policy", "unseen_class=quarantine"]) == 0
        code = main(
            ["ingest", "validate", src, "--spec", str(out / "profile" / "spec.json"),
             "--quarantine", str(out / "q.parquet"), "--report", str(out / "report.json")]
        )  # fmt: skip
        assert code == 0, capsys.readouterr().err
        reports[where] = json.loads((out / "report.json").read_text())
        assert reports[where]["source"] == src
        assert reports[where]["quarantine"] == str(out / "q.parquet")
        stats = json.loads((out / "profile" / "stats.json").read_text())
        reports[where]["stats"] = stats
    assert reports["s3"]["accounting"] == reports["local"]["accounting"]
    assert reports["s3"]["accounting"]["rows_in"] == N
    assert reports["s3"]["stats"] == reports["local"]["stats"]


@pytest.mark.parametrize(
    "key",
    ["parquet/missing.parquet", "nothing-here/", "parquet/part=*/x*.csv"],
)
def test_missing_key_is_a_clear_error_naming_the_source(s3, key, tmp_path, capsys):
    uri, _ = s3
    with pytest.raises(SourceError) as info:
        Source(uri(key))
    assert info.value.file == uri(key)
    code = main(["ingest", "profile", uri(key), "--label", "y", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"conveyor: error: {uri(key)}: ")


def test_missing_bucket_is_a_clear_error_naming_the_source(s3, tmp_path, capsys):
    uri, _ = s3
    missing = uri("parquet/").replace("s3://conveyor-", "s3://no-such-bucket-", 1)
    with pytest.raises(SourceError) as info:
        Source(missing)
    assert info.value.file == missing
    code = main(["ingest", "profile", missing, "--label", "y", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and missing in err


class _Denied(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that refuses every request (bad credentials, no permission): 403."""

    def _deny(self) -> None:
        body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _deny

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("key", ["data.parquet", "prefix/"])
def test_store_that_refuses_access_is_a_clear_error(aws_env, key, tmp_path, capsys):
    denied = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Denied)
    thread = threading.Thread(target=denied.serve_forever, daemon=True)
    thread.start()
    try:
        source = f"s3://bucket/{key}?endpoint_override=127.0.0.1:{denied.server_port}&scheme=http"
        code = main(["ingest", "profile", source, "--label", "y", "--out", str(tmp_path / "out")])
    finally:
        denied.shutdown()
        thread.join(10)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"conveyor: error: {source}: cannot list: ") and "ACCESS_DENIED" in err


def test_remote_output_paths_are_refused_not_written_locally(s3, tmp_path, monkeypatch, capsys):
    """Outputs go to local paths only: an s3:// quarantine or --out is an error at once, not a
    local directory named "s3:" in the working directory."""
    uri, _ = s3
    monkeypatch.chdir(tmp_path)
    target = uri("quarantine/")
    with pytest.raises(IngestError, match=r"quarantine s3://.*: a URI"):
        StreamLoader(uri("parquet/"), SPEC, quarantine=target)
    spec = tmp_path / "spec.json"
    SPEC.save(spec)
    for args in (
        ["profile", uri("parquet/"), "--label", "y", "--out", target],
        ["validate", uri("parquet/"), "--spec", str(spec), "--quarantine", target],
        ["validate", uri("parquet/"), "--spec", str(spec), "--report", target],
    ):
        assert main(["ingest", *args]) == 1
        err = capsys.readouterr().err
        assert "a URI; outputs are written to a local path only" in err and target in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local", "spec.json"]


def test_abandoned_s3_iteration_exits_cleanly(s3):
    """A loader left mid-epoch with its prefetch threads inside S3 reads: the interpreter must
    stop them before pyarrow finalizes S3, and exit 0 (no abort, no hang)."""
    uri, _ = s3
    script = textwrap.dedent(
        f"""
        from conveyor.ingest.loader import StreamLoader
        from tests.ingest.test_s3 import SPEC
        loader = StreamLoader({uri("parquet/")!r}, SPEC, batch_size=4, prefetch=4)
        it = iter(loader)
        next(it)
        print("took one batch")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert "took one batch" in result.stdout and "terminate" not in result.stderr
