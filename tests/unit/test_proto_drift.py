"""The committed generated protobuf code must be exactly what `make proto` produces today.

The generation below uses the same command line as the Makefile's `proto` target, run from the
repository root with ``-I .`` so that the output lands at <tmp>/proto/<name>_pb2*.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
FIX = "run make proto (and commit the result)"


def _proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def _committed_generated() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for suffix in GENERATED_SUFFIXES:
        for path in PROTO_DIR.glob(f"*{suffix}"):
            found[path.name] = path
    return found


def _source_stem(generated_name: str) -> str:
    for suffix in sorted(GENERATED_SUFFIXES, key=len, reverse=True):
        if generated_name.endswith(suffix):
            return generated_name[: -len(suffix)]
    raise AssertionError(f"not a generated name: {generated_name}")


def _generate(out: Path) -> dict[str, bytes]:
    protos = [str(p.relative_to(ROOT)) for p in _proto_files()]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *protos,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"protoc failed:\n{result.stderr}"
    generated_dir = out / "proto"
    return {p.name: p.read_bytes() for p in sorted(generated_dir.iterdir()) if p.is_file()}


def test_every_generated_file_has_its_proto() -> None:
    sources = {p.stem for p in _proto_files()}
    orphans = sorted(name for name in _committed_generated() if _source_stem(name) not in sources)
    assert not orphans, (
        f"generated files without a .proto in proto/: {orphans}; delete them, then {FIX}"
    )


def test_committed_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    committed = _committed_generated()
    if not _proto_files():
        assert not committed, f"generated files but no .proto: {sorted(committed)}; delete them"
        return

    fresh = _generate(tmp_path)
    expected = {f"{p.stem}{suffix}" for p in _proto_files() for suffix in GENERATED_SUFFIXES}
    assert set(fresh) == expected, f"protoc produced {sorted(fresh)}, expected {sorted(expected)}"

    missing = sorted(expected - set(committed))
    assert not missing, f"generated files missing from proto/: {missing}; {FIX}"

    stale = sorted(name for name in expected if committed[name].read_bytes() != fresh[name])
    assert not stale, f"generated files differ from a fresh generation: {stale}; {FIX}"
