"""Runs corpus test files through both runners and reports (file, promtool exit, dsagent exit, outputs).

Why a module beside the test: the pytest suite and the corpus author (who wants the list of mismatches
while writing cases) use the same comparison.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def find_promtool() -> str | None:
    """promtool on PATH, else <repo>/.cache/tools/bin/promtool (where .ci/install-deps puts it)."""
    found = shutil.which("promtool")
    if found:
        return found
    local = REPO / ".cache" / "tools" / "bin" / "promtool"
    return str(local) if local.is_file() and os.access(local, os.X_OK) else None


def promtool_verdict(promtool: str, test_file: Path) -> tuple[int, str]:
    proc = subprocess.run([promtool, "test", "rules", test_file.name], cwd=test_file.parent, capture_output=True,
                          text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def dsagent_verdict(test_file: Path) -> tuple[int, str]:
    from dsagent.rules.testrunner import run_files

    out = io.StringIO()
    cwd = Path.cwd()
    os.chdir(test_file.parent)
    try:
        code = run_files([test_file.name], out, out)
    finally:
        os.chdir(cwd)
    return code, out.getvalue()


def compare(promtool: str, files: list[Path]) -> list[tuple[Path, int, int, str, str]]:
    """Every file's (path, promtool code, dsagent code, promtool output, dsagent output)."""
    results = []
    for path in files:
        p_code, p_out = promtool_verdict(promtool, path)
        d_code, d_out = dsagent_verdict(path)
        results.append((path, p_code, d_code, p_out, d_out))
    return results


if __name__ == "__main__":
    import sys

    tool = find_promtool()
    assert tool, "promtool not found"
    corpus = sorted((Path(__file__).parent / "corpus").glob("*_test.yaml"))
    selected = [Path(a) for a in sys.argv[1:]] or corpus
    results = compare(tool, selected)
    bad = [r for r in results if r[1] != r[2]]
    for path, p, d, p_out, d_out in bad:
        print(f"=== MISMATCH {path.name}: promtool={p} dsagent={d}\n--- promtool:\n{p_out}\n--- dsagent:\n{d_out}")
    print(f"{len(results) - len(bad)}/{len(results)} agree")
