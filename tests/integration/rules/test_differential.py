"""The differential suite: every corpus file through `dsagent rules test` and the real `promtool test rules`;
both must pass it or both must fail it. Also `rules check` against `promtool check rules`, and hypothesis-
generated files whose expectations dsagent computes and promtool must accept.

promtool is found on PATH or in <repo>/.cache/tools/bin (.ci/install-deps puts Debian's there). Without it
the suite skips with that reason, except on CI (CI=true), where a missing promtool fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
import corpus_gen  # noqa: E402
from differential import dsagent_verdict, find_promtool, promtool_verdict  # noqa: E402

CORPUS = Path(__file__).parent / "corpus"
TEST_FILES = sorted(CORPUS.glob("*_test.yaml"))
RULE_FILES = sorted(CORPUS.glob("*.rules.yaml"))


@pytest.fixture(scope="module")
def promtool() -> str:
    found = find_promtool()
    if found is None:
        reason = "promtool not found on PATH or in .cache/tools/bin (run .ci/install-deps)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must run the differential suite")
        pytest.skip(reason)
    return found


def test_corpus_is_large_enough() -> None:
    assert len(TEST_FILES) >= 60, f"the differential corpus has {len(TEST_FILES)} test files; at least 60 wanted"
    assert any("mutant" in f.name for f in TEST_FILES) and any(f.name.startswith("err_") for f in TEST_FILES)


@pytest.mark.parametrize("test_file", TEST_FILES, ids=[f.name for f in TEST_FILES])
def test_dsagent_and_promtool_agree(promtool: str, test_file: Path) -> None:
    expected_code, promtool_output = promtool_verdict(promtool, test_file)
    code, output = dsagent_verdict(test_file)
    assert code == expected_code, (f"{test_file.name}: promtool exit {expected_code}, dsagent exit {code}\n"
                                   f"--- promtool:\n{promtool_output}\n--- dsagent:\n{output}")
    if "mutant" in test_file.name:
        assert code == 1 and "exp:" in output and "got:" in output  # a changed expectation is a failure
    if expected_code == 1 and "expr:" in promtool_output and "err:" not in promtool_output:
        # the exp/got lines read the same (promtool prints them; dsagent copies its format)
        assert sorted(line for line in promtool_output.splitlines() if line.strip().startswith(("exp:", "got:"))) == \
            sorted(line for line in output.splitlines() if line.strip().startswith(("exp:", "got:")))


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=[f.name for f in RULE_FILES])
def test_rules_check_agrees_with_promtool(promtool: str, rule_file: Path) -> None:
    expected = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60)
    from dsagent.rules.rulefile import RuleFileError, load_file

    try:
        load_file(rule_file)
        ok = True
    except RuleFileError:
        ok = False
    assert ok == (expected.returncode == 0), f"{rule_file.name}: promtool says {expected.stdout}{expected.stderr}"


def test_cli_rules_test_runs_the_corpus(promtool: str) -> None:
    """`dsagent rules test` (the real CLI) passes the files promtool passes and fails a mutant with exp/got."""
    passing = [f for f in TEST_FILES if not f.name.startswith("err_") and "mutant" not in f.name][:8]
    mutant = next(f for f in TEST_FILES if "mutant" in f.name)
    run = [sys.executable, "-m", "dsagent.cli", "rules", "test"]
    ok = subprocess.run([*run, *[f.name for f in passing]], cwd=CORPUS, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("SUCCESS") == len(passing)
    bad = subprocess.run([*run, mutant.name], cwd=CORPUS, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "FAILED" in bad.stderr and "got:" in bad.stderr
    assert promtool_verdict(promtool, mutant)[0] == 1


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(min_value=0, max_value=2**31))
def test_generated_files_pass_in_promtool(promtool: str, tmp_path_factory: pytest.TempPathFactory, seed: int) -> None:
    """Hypothesis draws series and expressions; dsagent writes the expectations; promtool must pass them."""
    import yaml

    directory = tmp_path_factory.mktemp("generated")
    [c] = corpus_gen.random_cases(1, seed=seed)
    (directory / "gen.rules.yaml").write_text(yaml.safe_dump({"groups": c["rules"]}, sort_keys=False))
    test_path = directory / "gen_test.yaml"
    doc = corpus_gen._fill(corpus_gen._test_doc(c, "gen.rules.yaml"), test_path)
    if doc is None:
        return  # an expression errored in dsagent; the corpus covers error agreement separately
    test_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, output = promtool_verdict(promtool, test_path)
    assert code == 0, f"seed {seed}: promtool disagrees with dsagent's values\n{output}\n{test_path.read_text()}"
    assert dsagent_verdict(test_path)[0] == 0
