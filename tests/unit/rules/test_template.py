"""Alert templates print values the way Prometheus (Go's fmt and template funcs) does."""

from __future__ import annotations

import pytest
from dsagent.rules.template import TemplateError, check, expand, go_float, humanize, humanize_duration


@pytest.mark.parametrize(("value", "text"), [(1.0, "1"), (0.25, "0.25"), (123456.0, "123456"), (1e6, "1e+06"),
                                             (1234567.0, "1.234567e+06"), (1e-5, "1e-05"), (-2.5, "-2.5")])
def test_value_prints_like_go(value: float, text: str) -> None:
    assert go_float(value) == text


def test_humanize_functions() -> None:
    assert humanize(1234.0) == "1.234k" and humanize(0.0123) == "12.3m" and humanize(0) == "0"
    assert humanize_duration(0.2345) == "234.5ms" and humanize_duration(3661) == "1h 1m 1s"
    assert expand("{{ humanizePercentage $value }}", {}, 0.8765) == "87.65%"
    assert expand('{{ $labels.gpu }} {{ printf "%.2f" $value }} {{ .Value }}', {"gpu": "0"}, 1.0 / 3) == \
        "0 0.33 0.3333333333333333"
    assert expand("{{- $value -}} x", {}, 2.0) == "2x"


def test_unsupported_constructs_are_refused() -> None:
    with pytest.raises(TemplateError):
        check("{{ if gt $value 1.0 }}big{{ end }}")
    with pytest.raises(TemplateError):
        check("{{ nosuchfunc $value }}")
