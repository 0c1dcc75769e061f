"""The sans-I/O cores never import asyncio, socket, time or random (DESIGN.md): time is ticks
or an injected ``now``, randomness an injected ``random.Random``. Imports used only for type
annotations (under ``if TYPE_CHECKING:``) and inside functions of helpers are allowed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"asyncio", "socket", "time", "random", "threading", "selectors"}
CORE_FILES = sorted(
    [
        *ROOT.glob("raft/core/*.py"),
        *(
            ROOT / "gossip" / n
            for n in (
                "messages.py",
                "memberlist.py",
                "suspicion.py",
                "awareness.py",
                "broadcast.py",
                "math.py",
                "config.py",
                "wire.py",
                "core.py",
                "keyring.py",
            )
        ),
        *ROOT.glob("gossip/serf/*.py"),
        ROOT / "server" / "gateway" / "clienthello.py",
        ROOT / "server" / "gateway" / "routes.py",
        ROOT / "server" / "federation" / "router.py",
        ROOT / "server" / "federation" / "locator.py",
        ROOT / "server" / "dns" / "names.py",
    ]
)


def module_level_imports(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in (
            ast.walk(node)
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            else ()
        ):
            if isinstance(sub, ast.Import):
                names.update(a.name.split(".")[0] for a in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                names.add(sub.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_has_no_io_imports(path: Path) -> None:
    imported = module_level_imports(ast.parse(path.read_text()))
    assert not imported & FORBIDDEN, f"{path.name} imports {sorted(imported & FORBIDDEN)}"


def test_the_list_is_not_empty() -> None:
    assert len(CORE_FILES) > 15
