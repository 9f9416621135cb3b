"""`dsagent act`: send one operator Decision through the running agent's guard (runbooks, tests).

Why through the agent: the change then takes exactly the path a rule's change takes (bounds, rate limit,
dry-run, actuator) and lands in the same audit trail (`dsagent status`, logs-dsagent.actions). The agent's
POST /api/actions needs the bearer token the agent keeps in data_dir/control.token (0600).

    dsagent act max_batch_size=16            set a knob (x0.5 multiplies, +8 / -8 step)
    dsagent act scale 6 | scale +1 | scale x1.5
    dsagent act power 250 | power 80% | power reset
    dsagent act clocks 1410 | clocks 1410:1593 | clocks reset
    dsagent act notify [URL]
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer

from dsagent.actions.spec import KNOWN_KNOBS

_NUMBER = re.compile(r"^[-+]?\d+(?:\.\d+)?$")


def parse_words(words: list[str]) -> list[dict[str, Any]]:
    """Command words -> rule-file action items; ValueError naming the word that is wrong."""
    items: list[dict[str, Any]] = []
    index = 0

    def argument(name: str) -> str:
        if index + 1 >= len(words):
            raise ValueError(f"'{name}' needs a value (see dsagent act --help)")
        return words[index + 1]

    while index < len(words):
        word = words[index]
        if "=" in word:
            knob, _, raw = word.partition("=")
            if knob not in KNOWN_KNOBS:
                raise ValueError(f"unknown knob {knob!r}; known: {', '.join(sorted(KNOWN_KNOBS))}")
            body: dict[str, Any] = {"knob": knob}
            if raw.startswith("x") and _NUMBER.match(raw[1:]):
                body["factor"] = float(raw[1:])
            elif raw[:1] in "+-" and _NUMBER.match(raw):
                body["step"] = float(raw)
            elif _NUMBER.match(raw):
                body["value"] = float(raw) if "." in raw else int(raw)
            elif raw:
                body["value"] = raw
            else:
                raise ValueError(f"{word!r}: give a value after '='")
            items.append({"set_knob": body})
            index += 1
        elif word == "scale":
            items.append({"scale": {"replicas": argument("scale"), "min": 0, "max": 10_000}})
            index += 2
        elif word == "power":
            raw = argument("power")
            if raw == "reset":
                items.append({"reset_power_limit": {}})
            elif raw.endswith("%") and _NUMBER.match(raw[:-1]):
                items.append({"set_power_limit": {"fraction_of_default": float(raw[:-1]) / 100.0}})
            elif _NUMBER.match(raw):
                items.append({"set_power_limit": {"watts": float(raw)}})
            else:
                raise ValueError(f"power {raw!r}: give watts (250), a share of the default (80%) or reset")
            index += 2
        elif word == "clocks":
            raw = argument("clocks")
            if raw == "reset":
                items.append({"reset_gpu_clocks": {}})
            else:
                graphics, _, memory = raw.partition(":")
                if not graphics.isdigit() or (memory and not memory.isdigit()):
                    raise ValueError(f"clocks {raw!r}: give GRAPHICS_MHZ[:MEMORY_MHZ] (1410:1593) or reset")
                items.append({"set_gpu_clocks": {"graphics_mhz": int(graphics),
                                                 **({"memory_mhz": int(memory)} if memory else {})}})
            index += 2
        elif word == "notify":
            url = words[index + 1] if index + 1 < len(words) and words[index + 1].startswith("http") else None
            items.append({"notify": {"url": url} if url else {}})
            index += 2 if url else 1
        else:
            raise ValueError(f"don't know {word!r}: use KNOB=VALUE, scale N, power W, clocks MHZ or notify")
    if not items:
        raise ValueError("nothing to do: give KNOB=VALUE, scale N, power W, clocks MHZ or notify")
    return items


def act(
    words: list[str] = typer.Argument(..., help="KNOB=VALUE | scale N|+1|-1|xF | power W|P%|reset | "
                                                "clocks MHZ[:MEM_MHZ]|reset | notify [URL]"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Record what would change; change nothing."),
    reason: str = typer.Option("dsagent act", "--reason", help="Why (goes into the audit event)."),
    url: str | None = typer.Option(None, "--url", envvar="DSAGENT_AGENT_URL", help="The running agent's API."),
    config_file: Path | None = typer.Option(None, "--config", "-c", envvar="DSAGENT_CONFIG", help="YAML config file."),
    data_dir: Path | None = typer.Option(None, "--data-dir", envvar="DSAGENT_DATA_DIR"),
    as_json: bool = typer.Option(False, "--json", help="Print the outcomes as JSON."),
) -> None:
    """Change a knob, the replica count, GPU power or clocks now, through the agent's guard and audit."""
    import httpx

    from dsagent.cli import _agent_url, _fail, _load

    try:
        items = parse_words(list(words))
    except ValueError as exc:
        _fail(str(exc))
        return
    config = _load(config_file, {"data_dir": str(data_dir) if data_dir else None})
    token_path = Path(config.data_dir).expanduser() / "control.token"
    try:
        token = token_path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        _fail(f"cannot read the agent's control token {token_path} ({exc.strerror or exc}); is `dsagent run` "
              f"running with this data dir? (--data-dir)")
        return
    base = _agent_url(url, config_file, data_dir)
    from rich.console import Console

    console = Console(stderr=True)
    try:
        # a precision/backend swap or a vLLM restart takes a while: say so on a terminal
        with console.status("applying through the agent's guard (a runner swap or engine restart can take a "
                            "minute)...", spinner="dots"):
            response = httpx.post(f"{base}/api/actions", json={"actions": items, "dry_run": dry_run, "reason": reason},
                                  headers={"Authorization": f"Bearer {token}"}, timeout=300.0)
    except httpx.HTTPError as exc:
        _fail(f"no agent answering at {base}/api/actions ({exc}); is `dsagent run` running? (--url)")
        return
    answer = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code in (401, 422):
        _fail(str(answer.get("error") or response.text[:200]))
        return
    outcomes = answer.get("outcomes", [])
    if as_json:
        typer.echo(json.dumps(outcomes, indent=2))
    else:
        for outcome in outcomes:
            event = outcome.get("event") or {}
            typer.echo(f"{outcome['status']:<11} {event.get('knob', '')}: {outcome['reason']}")
    if any(o.get("status") == "failed" for o in outcomes):
        raise typer.Exit(1)
