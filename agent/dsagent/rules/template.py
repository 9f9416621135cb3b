"""Alert label and annotation templates: the part of Go's text/template that Prometheus rules use.

Why our own: annotations must read exactly as Prometheus writes them (promtool compares them byte for
byte), so `{{ $value }}` prints a float like Go's fmt (`1e+06`, `0.25`), and `humanize`,
`humanizePercentage`, `humanizeDuration`, `printf`, `toUpper`, `toLower`, `title` follow
template/template.go. Supported actions: text, `{{ pipeline }}` with `|`, variables `$value`, `$labels.x`,
`$externalLabels.x`, `.Value`, `.Labels.x`, string and number literals, and `{{-`/`-}}` trimming.
Anything else (if/range/with/define, query) is refused when the rule file loads, naming the construct.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


class TemplateError(ValueError):
    """A template uses something this subset does not implement, or is malformed."""


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(`[^`]*`)|(\|)|(\()|(\))|([^\s|()]+))')


def go_float(value: float) -> str:
    """fmt's %v for a float64 (strconv 'g', shortest): exponent form when exp < -4 or >= 6 (eprec 6)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    text_digits = "".join(map(str, digits)).rstrip("0") or "0"
    point = len(digits) + int(exponent)  # position of the decimal point within digits
    exp = point - 1
    prefix = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = text_digits[0] + ("." + text_digits[1:] if len(text_digits) > 1 else "")
        return f"{prefix}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{text_digits}"
    if point >= len(text_digits):
        return f"{prefix}{text_digits}{'0' * (point - len(text_digits))}"
    return f"{prefix}{text_digits[:point]}.{text_digits[point:]}"


def _g4(value: float) -> str:
    """Go's %.4g."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return _go_printf("%.4g", [value])


def humanize(value: float) -> str:
    if value == 0 or math.isnan(value) or math.isinf(value):
        return _g4(value)
    prefix = ""
    if abs(value) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(value) < 1000:
                break
            prefix = p
            value /= 1000
        return _g4(value) + prefix
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(value) >= 1:
            break
        prefix = p
        value *= 1000
    return _g4(value) + prefix


def humanize_1024(value: float) -> str:
    if abs(value) <= 1 or math.isnan(value) or math.isinf(value):
        return _g4(value)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(value) < 1024:
            break
        prefix = p
        value /= 1024
    return _g4(value) + prefix


def humanize_duration(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return _g4(value)
    if value == 0:
        return "0s"
    if abs(value) >= 1:
        sign = "-" if value < 0 else ""
        value = abs(value)
        seconds = int(value) % 60
        minutes = int(value) // 60 % 60
        hours = int(value) // 60 // 60 % 24
        days = int(value) // 60 // 60 // 24
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_go_printf('%.4g', [value])}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(value) >= 1:
            break
        prefix = p
        value *= 1000
    return f"{_go_printf('%.4g', [value])}{prefix}s"


def _go_printf(fmt: str, args: list[Any]) -> str:
    """fmt.Sprintf for the verbs templates use: %s %v %d %f %e %g with flags, width and precision."""
    out = []
    index = 0
    for match in re.finditer(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])|[^%]+|%", fmt):
        verb = match.group(4)
        if verb is None:
            out.append(match.group(0))
            continue
        if verb == "%":
            out.append("%")
            continue
        if index >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[index]
        index += 1
        flags, width, precision = match.group(1), match.group(2) or "", match.group(3)
        spec = f"%{flags}{width}" + (f".{precision}" if precision is not None else "")
        if verb in "efgEG" and isinstance(arg, int | float) and not isinstance(arg, bool):
            number = float(arg)
            if math.isnan(number) or math.isinf(number):
                text = "NaN" if math.isnan(number) else ("+Inf" if number > 0 else "-Inf")
                out.append(text.rjust(int(width or 0)))
                continue
            text = (spec + verb) % number
            if verb in "gG" and precision is None:
                text = go_float(number)  # %g with no precision: shortest digits, as %v
            out.append(text)
        elif verb == "d" and isinstance(arg, int | float) and not isinstance(arg, bool):
            if isinstance(arg, float) and not arg.is_integer():
                out.append(f"%!d(float64={go_float(arg)})")
            else:
                out.append((spec + "d") % int(arg))
        elif verb in "sv":
            text = go_float(arg) if isinstance(arg, float) else str(arg)
            out.append((spec + "s") % text)
        elif verb == "q":
            out.append('"' + str(arg).replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            out.append(f"%!{verb}({type(arg).__name__}={arg})")
    return "".join(out)


def _title(text: str) -> str:
    return re.sub(r"(^|[^\w'])(\w)", lambda m: m.group(1) + m.group(2).upper(), text)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "humanize": lambda v: humanize(_num(v)),
    "humanize1024": lambda v: humanize_1024(_num(v)),
    "humanizeDuration": lambda v: humanize_duration(_num(v)),
    "humanizePercentage": lambda v: _g4(_num(v) * 100) + "%",
    "printf": lambda fmt, *args: _go_printf(str(fmt), list(args)),
    "toUpper": lambda s: str(s).upper(),
    "toLower": lambda s: str(s).lower(),
    "title": lambda s: _title(str(s)),
    "reReplaceAll": lambda pattern, repl, text: re.sub(pattern, re.sub(r"\$(\d+)", r"\\\1", repl), str(text)),
}


def _num(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        raise TemplateError(f"can't convert {value!r} to float") from None


@dataclass(frozen=True)
class _Piece:
    text: str | None = None
    pipeline: tuple[tuple[str, ...], ...] = ()


class Template:
    """A parsed template; expand() fills it for one alert."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.pieces = _parse(source)

    def expand(self, labels: dict[str, str], value: float, external_labels: dict[str, str] | None = None) -> str:
        out = []
        for piece in self.pieces:
            if piece.text is not None:
                out.append(piece.text)
                continue
            result = _run_pipeline(piece.pipeline, labels, value, external_labels or {})
            out.append(go_float(result) if isinstance(result, float) else str(result))
        return "".join(out)


def _parse(source: str) -> list[_Piece]:
    pieces: list[_Piece] = []
    position = 0
    for match in _ACTION.finditer(source):
        text = source[position:match.start()]
        if match.group(1):
            text = text.rstrip()
        if pieces and pieces[-1].text == "\0trim":
            pieces.pop()
            text = text.lstrip()
        pieces.append(_Piece(text=text))
        body = match.group(2).strip()
        if body.startswith("/*"):
            pass
        else:
            pieces.append(_Piece(pipeline=_parse_pipeline(body)))
        if match.group(3):
            pieces.append(_Piece(text="\0trim"))
        position = match.end()
    tail = source[position:]
    if pieces and pieces[-1].text == "\0trim":
        pieces.pop()
        tail = tail.lstrip()
    if "{{" in tail:
        raise TemplateError(f"unclosed action in template {source!r}")
    pieces.append(_Piece(text=tail))
    return pieces


_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"}


def _parse_pipeline(body: str) -> tuple[tuple[str, ...], ...]:
    commands: list[list[str]] = [[]]
    for match in _TOKEN.finditer(body):
        string, raw, pipe, lparen, rparen, word = match.groups()
        if pipe:
            commands.append([])
        elif lparen or rparen:
            raise TemplateError(f"parentheses in template actions are not supported: {{{{ {body} }}}}")
        elif string or raw:
            commands[-1].append(string or raw)
        elif word:
            if word in _KEYWORDS or word.startswith("$") and ":=" in body:
                raise TemplateError(f"template action {word!r} is not supported (dsagent implements plain pipelines): "
                                    f"{{{{ {body} }}}}")
            commands[-1].append(word)
    if any(not command for command in commands):
        raise TemplateError(f"empty command in template pipeline {{{{ {body} }}}}")
    for command in commands:
        head = command[0]
        if not (head.startswith(("$", ".", '"', "`")) or _is_number(head)) and head not in FUNCTIONS:
            raise TemplateError(f'function "{head}" not defined')
    return tuple(tuple(c) for c in commands)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _operand(token: str, labels: dict[str, str], value: float, external: dict[str, str]) -> Any:
    if token.startswith('"'):
        return bytes(token[1:-1], "utf-8").decode("unicode_escape")
    if token.startswith("`"):
        return token[1:-1]
    if token in ("$value", ".Value"):
        return value
    for prefix, mapping in (("$labels", labels), (".Labels", labels), ("$externalLabels", external),
                            (".ExternalLabels", external)):
        if token == prefix:
            return "map[" + " ".join(f"{k}:{v}" for k, v in sorted(mapping.items())) + "]"
        if token.startswith(prefix + "."):
            return mapping.get(token[len(prefix) + 1:], "<no value>")
    if token in ("$externalURL", ".ExternalURL"):
        return ""
    if _is_number(token):
        number = float(token)
        return int(number) if number.is_integer() and "." not in token and "e" not in token.lower() else number
    if token in FUNCTIONS:
        return FUNCTIONS[token]()
    raise TemplateError(f"undefined variable or field {token!r}")


def _run_pipeline(pipeline: tuple[tuple[str, ...], ...], labels: dict[str, str], value: float,
                  external: dict[str, str]) -> Any:
    result: Any = None
    for position, command in enumerate(pipeline):
        head, *rest = command
        args = [_operand(token, labels, value, external) for token in rest]
        if position > 0:
            args.append(result)
        if head in FUNCTIONS:
            result = FUNCTIONS[head](*args)
        else:
            if args:
                raise TemplateError(f"can't give argument to non-function {head}")
            result = _operand(head, labels, value, external)
    return result


def check(source: str) -> None:
    """Raise TemplateError when the template cannot be parsed by this subset."""
    Template(source)


def expand(source: str, labels: dict[str, str], value: float, external_labels: dict[str, str] | None = None) -> str:
    """Expand once; a failure reads `<error expanding template: ...>` as in Prometheus."""
    try:
        return Template(source).expand(labels, value, external_labels)
    except (TemplateError, TypeError, ValueError) as exc:
        return f"<error expanding template: {exc}>"
