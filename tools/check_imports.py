"""Check the package's import structure: the import-linter layer contracts (pyproject.toml), no
import cycle anywhere in the package, and no function-level import without a reason.

A function-level import hides a dependency from the reader and from the contracts; it is allowed
only for an optional heavy dependency, with a one-line ``# lazy: <reason>`` comment on the import
line (or the line above it).

Run from the repository root: ``.venv/bin/python tools/check_imports.py`` (CI: ``.ci/run``).

Why a wrapper and not plain ``lint-imports``: import-linter (grimp) builds its graph by walking
the folder of the root package, but ``accelmon.collector`` and ``accelmon.analytics`` live in the
top-level folders collector/ and analytics/ (pyproject's ``package-dir``) and reach the
``accelmon`` namespace only through the editable install's import hook, which a folder walk
does not see. So the package is first laid out as it is installed (a copy of the ``.py`` files:
accelmon/, collector/ -> accelmon/collector/, analytics/ -> accelmon/analytics/) in a temporary
folder, and the graph is built from that copy.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import sys
import tempfile
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
# installed module prefix -> source folder (pyproject.toml [tool.setuptools] package-dir)
PACKAGE_DIRS = {"accelmon": ROOT / "accelmon", "accelmon/collector": ROOT / "collector",
                "accelmon/analytics": ROOT / "analytics"}
# Import cycles still tracked (listed here, reported as known). None: the sim/nvml.py split
# (nvml_*.py) removed the last type-only ones; an entry is a frozenset of the cycle's modules.
KNOWN_CYCLES: set[frozenset[str]] = set()


LAZY_MARK = "# lazy:"


def function_level_imports(source: str, filename: str = "<source>") -> list[str]:
    """``file:line: statement`` for every import inside a function body without a ``# lazy:``
    reason on its line or the line above."""
    lines = source.splitlines()
    out: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for n in ast.walk(node):
            if isinstance(n, ast.Import | ast.ImportFrom):
                here = lines[n.lineno - 1]
                above = lines[n.lineno - 2] if n.lineno >= 2 else ""
                if LAZY_MARK not in here and not above.strip().startswith(LAZY_MARK):
                    out.append(f"{filename}:{n.lineno}: {here.strip()}")
    return sorted(set(out))


def package_function_level_imports() -> list[str]:
    out: list[str] = []
    for src in PACKAGE_DIRS.values():
        for f in sorted(src.rglob("*.py")):
            out += function_level_imports(f.read_text(), str(f.relative_to(ROOT)))
    return out


def mirror(dest: Path) -> Path:
    """Copy the package's .py files into ``dest`` laid out as installed; returns ``dest``."""
    for prefix, src in PACKAGE_DIRS.items():
        for f in src.rglob("*.py"):
            if "__pycache__" in f.parts:
                continue
            out = dest / prefix / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out)
    return dest


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Import cycles between modules (a module that imports itself through others), one shortest
    chain per cycle, each cycle reported once."""
    seen: set[frozenset[str]] = set()
    out: list[list[str]] = []
    for mod in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(mod)):
            chain = graph.find_shortest_chain(importer=imported, imported=mod)
            if chain is None:
                continue
            key = frozenset(chain)
            if key not in seen:
                seen.add(key)
                out.append([mod, *chain])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles-only", action="store_true", help="only the cycle check (no contracts)")
    args = ap.parse_args(argv)
    hidden = package_function_level_imports()
    for line in hidden:
        print(f"{line}  <- function-level import without a '{LAZY_MARK} <reason>' comment")
    with tempfile.TemporaryDirectory(prefix="accelmon-imports-") as tmp:
        mirror(Path(tmp))
        sys.path.insert(0, tmp)
        for name in [m for m in sys.modules if m == "accelmon" or m.startswith("accelmon.")]:
            del sys.modules[name]  # the copy, not an already-imported installed package
        rc = 0
        if not args.cycles_only:
            # lint-imports puts the working directory first on sys.path: run it in the copy
            shutil.copyfile(ROOT / "pyproject.toml", Path(tmp) / "pyproject.toml")
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                rc = lint_imports(config_filename="pyproject.toml", no_cache=True, no_logo=True)
            finally:
                os.chdir(cwd)
        found = cycles(grimp.build_graph("accelmon", cache_dir=None))
        new = [c for c in found if frozenset(c) not in KNOWN_CYCLES]
        for c in found:
            print(("import cycle: " if c in new else "known type-only import cycle: ") + " -> ".join(c))
        for k in KNOWN_CYCLES - {frozenset(c) for c in found}:
            print("gone (delete it from KNOWN_CYCLES): " + ", ".join(sorted(k)))
        print(f"import cycles: {len(new)}")
        return 1 if (rc or new or hidden) else 0


if __name__ == "__main__":
    sys.exit(main())
