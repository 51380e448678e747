"""Regenerate the Python code for ``grpc_service.proto`` (``make protos``).

Run from the repository root with grpcio-tools installed (the ``dev`` extra)::

    python -m conveyor.engine.protos.generate

Two things differ from a plain ``grpc_tools.protoc`` run, both on purpose:

* The proto is compiled under the path ``conveyor/engine/protos/`` so the
  generated ``*_pb2_grpc.py`` imports ``conveyor.engine.protos.grpc_service_pb2``.
* The generated ``*_pb2.py`` registers its descriptors in a private
  :class:`~google.protobuf.descriptor_pool.DescriptorPool` (``POOL``) instead of
  protobuf's process-wide default pool. Other OIP clients (``tritonclient``,
  KServe, MLServer) register messages with the same full names
  (``inference.ModelInferRequest``) in the default pool, and protobuf refuses a
  second definition of a name there; a private pool lets conveyor run in the
  same process as any of them.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "grpc_service.proto"
PACKAGE_PATH = Path("conveyor", "engine", "protos")

_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = (
    "# conveyor: a private pool, so other OIP clients' identically named messages can\n"
    "# live in the same process (see conveyor/engine/protos/generate.py).\n"
    "POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = POOL.AddSerializedFile("
)


def generate(out_dir: Path = HERE) -> list[Path]:
    """Compile :data:`PROTO` into ``out_dir``; returns the files written."""
    from grpc_tools import protoc  # dev dependency only

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src")
        dst = Path(tmp, "out")
        (src / PACKAGE_PATH).mkdir(parents=True)
        dst.mkdir()
        shutil.copy(HERE / PROTO, src / PACKAGE_PATH / PROTO)
        include = Path(protoc.__file__).parent / "_proto"
        rc = protoc.main(
            [
                "protoc",
                f"-I{src}",
                f"-I{include}",
                f"--python_out={dst}",
                f"--pyi_out={dst}",
                f"--grpc_python_out={dst}",
                str(PACKAGE_PATH / PROTO),
            ]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        written = []
        for path in sorted((dst / PACKAGE_PATH).iterdir()):
            text = path.read_text()
            if path.name.endswith("_pb2.py"):
                if "DESCRIPTOR = " + _DEFAULT_POOL not in text:
                    raise SystemExit(f"{path.name}: unexpected generated code; update generate.py")
                text = text.replace("DESCRIPTOR = " + _DEFAULT_POOL, _PRIVATE_POOL)
            target = out_dir / path.name
            target.write_text(text)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in generate():
        print(path, file=sys.stderr)
