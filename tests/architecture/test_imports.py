"""The package's import structure (issue 16, docs/architecture.md): the import-linter layer
contracts hold, there is no import cycle, and no import hides in a function without a reason.

The checks themselves live in tools/check_imports.py (CI runs it next to ruff); these tests run
it on the real package and show that each check catches what it is meant to catch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_imports", REPO / "tools" / "check_imports.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_package_keeps_the_contracts_and_has_no_cycle() -> None:
    r = subprocess.run([sys.executable, "tools/check_imports.py"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 3 kept, 0 broken." in r.stdout
    assert "import cycles: 0" in r.stdout


def test_no_function_level_import_without_a_reason(tool: ModuleType) -> None:
    assert tool.package_function_level_imports() == []


def test_function_level_import_is_flagged_unless_it_gives_a_reason(tool: ModuleType) -> None:
    src = textwrap.dedent("""
        import os


        def plain():
            import json
            return json


        async def nested():
            def inner():
                from a.b import c
                return c
            return inner


        def reasoned():
            import readline  # lazy: optional, interactive shell only
            # lazy: heavy and optional
            import matplotlib
            return readline, matplotlib
    """)
    flagged = tool.function_level_imports(src, "m.py")
    assert flagged == ["m.py:12: from a.b import c", "m.py:6: import json"]


def test_a_cycle_is_found(tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyc import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cyc import c\n")
    (pkg / "c.py").write_text("import cyc.a\n")
    (pkg / "d.py").write_text("import cyc.a\n")  # imports into the cycle, is not part of it
    monkeypatch.syspath_prepend(str(tmp_path))
    found = tool.cycles(grimp.build_graph("cyc", cache_dir=None))
    assert [sorted(c[:-1]) for c in found] == [["cyc.a", "cyc.b", "cyc.c"]]
    assert all(c[0] == c[-1] for c in found)
