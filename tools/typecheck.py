"""Run mypy (strict, ``[tool.mypy]`` in pyproject.toml) on the strict paths: analytics,
collector/base.py (the Source Protocol) and accelmon/store.

Run from the repository root: ``.venv/bin/python tools/typecheck.py`` (CI: ``.ci/run``).
mypy cannot follow the editable install's ``package-dir`` mapping (collector/ and analytics/ are
``accelmon.collector`` and ``accelmon.analytics``), so, like tools/check_imports.py, it checks a
copy of the ``.py`` files laid out as installed; reported paths are mapped back to the sources.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from check_imports import PACKAGE_DIRS, ROOT, mirror

CACHE = ROOT / ".mypy_cache"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="accelmon-typecheck-") as tmp:
        mirror(Path(tmp))
        shutil.copyfile(ROOT / "pyproject.toml", Path(tmp) / "pyproject.toml")
        r = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(CACHE)], cwd=tmp,
                           capture_output=True, text=True)
    # accelmon/analytics/x.py -> analytics/x.py (longest installed prefix first)
    prefixes = sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(kv[0]))

    def source_path(m: re.Match[str]) -> str:
        p = m.group(0)
        for prefix, src in prefixes:
            if p.startswith(prefix + "/"):
                return str((src / p[len(prefix) + 1:]).relative_to(ROOT))
        return p

    out = re.sub(r"^accelmon/[\w/]+\.py", source_path, r.stdout + r.stderr, flags=re.M)
    print(out, end="")
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
