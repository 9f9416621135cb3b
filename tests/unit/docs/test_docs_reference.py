"""docs/: the generated references are current (regenerate with `python -m dsagent.docgen`), every relative
link resolves, and the troubleshooting page covers the cases the operator guides list."""

from __future__ import annotations

import re

from dsagent import docgen
from dsagent.config import AgentConfig
from dsagent.sources.metric_metadata import ALL_METRICS

from tests.conftest import REPO_ROOT

DOCS = REPO_ROOT / "docs"


def test_generated_pages_are_current() -> None:
    for name, build in docgen.PAGES.items():
        assert (DOCS / name).read_text() == build(), (
            f"docs/{name} is stale: run `python -m dsagent.docgen` and commit the result")
    assert docgen.main(["--check"]) == 0


def test_check_mode_reports_a_stale_page(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name in docgen.PAGES:
        (tmp_path / name).write_text("old\n")
    assert docgen.main(["--check", "--docs", str(tmp_path)]) == 1
    assert docgen.main(["--docs", str(tmp_path)]) == 0 and docgen.main(["--check", "--docs", str(tmp_path)]) == 0


def test_configuration_reference_lists_every_section_and_metric_reference_every_metric() -> None:
    configuration = (DOCS / "configuration.md").read_text()
    for section in AgentConfig.model_fields:
        assert f"`{section}" in configuration, section
    assert "`DSAGENT_EXPORT__SPOOL__MAX_BYTES`" in configuration
    metrics = (DOCS / "metrics.md").read_text()
    for entry in ALL_METRICS:
        assert f"`{entry.name}`" in metrics, entry.name


def test_every_relative_link_in_the_docs_resolves() -> None:
    for page in [*DOCS.glob("*.md"), REPO_ROOT / "README.md", REPO_ROOT / "rules" / "README.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_troubleshooting_covers_the_operator_guides_cases() -> None:
    text = (DOCS / "troubleshooting.md").read_text().lower()
    for heading in ("## out of memory", "## accuracy drop after quantization", "## timeouts",
                    "## a crash-looping engine", "## elasticsearch unreachable", "## nvml permission errors"):
        assert heading in text, heading
    index = (DOCS / "README.md").read_text()
    for guide in ("install-pip.md", "install-systemd.md", "install-kubernetes.md", "install-compose.md"):
        assert guide in index and (DOCS / guide).exists()
