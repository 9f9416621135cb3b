"""Reaction time of rules that act: from the first breaching sample in the store to the applied knob change,
on the real flow (`dsagent run` + the real sidecar; the knob goes through the sidecar's /control).

Each trial injects slow request records (OTLP JSON to the agent's receiver: generation_time 5 s, every
0.2 s: a sustained breach), so `inference_latency_p99_seconds` jumps over the rule's 2 s threshold at the
next collection tick. The rule
(`for: F`, group interval I) sets max_batch_size; its verify-after-apply then sees the signal got worse
(more slow records are injected during the settle time) and rolls the change back, which also resets the
knob for the next trial. Per trial:

  reaction   applied audit event time - timestamp of the first store sample over the threshold
             (fast records between trials push the slow one out of the 2 s SLO window so the rule resolves)
  rollback   rolled_back audit event time - (applied time + settle): how late the verify acted

Target (issue 17): reaction p99 <= I + F + 1 s. Baseline in the same run: the actuator alone (the same
PUT /control/knobs, timed directly); the rule itself cannot fire before F, nor later than F + I after the
breach reaches the store (evaluation grid), so the agent's own share is reaction - F.

    .venv/bin/python bench/reaction.py [--trials 20] [--interval 1] [--for 2] [--settle 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.common import add_common_arguments, percentile  # noqa: E402
from tests.conftest import build_demo_model  # noqa: E402
from tests.e2e.actions_harness import AgentUnderTest, wait_for  # noqa: E402

RECEIVER_TOKEN = "bench-reaction-token"
THRESHOLD_SECONDS = 2.0
HYSTERESIS_SECONDS = 3.0


def iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def slow_record(endpoint: str, generation_seconds: float) -> None:
    """One request record as the sidecar would send it (OTLP/HTTP JSON log), with a long generation time."""
    now_ns = str(time.time_ns())
    attributes = [
        {"key": "request_id", "value": {"stringValue": f"bench-{uuid.uuid4().hex}"}},
        {"key": "generation_time", "value": {"doubleValue": generation_seconds}},
        {"key": "model", "value": {"stringValue": "demo-model"}},
        {"key": "prompt_length", "value": {"intValue": "8"}},
        {"key": "tokens_generated", "value": {"intValue": "16"}},
        {"key": "finish_reason", "value": {"stringValue": "length"}},
    ]
    body = {"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "bench"}}]},
                              "scopeLogs": [{"logRecords": [{"timeUnixNano": now_ns, "observedTimeUnixNano": now_ns,
                                                             "attributes": attributes}]}]}]}
    response = httpx.post(f"{endpoint}/v1/logs", json=body, timeout=10,
                          headers={"Authorization": f"Bearer {RECEIVER_TOKEN}"})
    response.raise_for_status()


def first_breach_seconds(api_url: str, after_seconds: float) -> float | None:
    """Timestamp of the first raw store sample of the p99 gauge above the threshold, after `after_seconds`."""
    response = httpx.get(f"{api_url}/api/v1/query", params={"query": "inference_latency_p99_seconds[60s]"}, timeout=10)
    response.raise_for_status()
    for series in response.json()["data"]["result"]:
        for stamp, value in series["values"]:
            if float(stamp) >= after_seconds and float(value) > THRESHOLD_SECONDS:
                return float(stamp)
    return None


def rule_state(agent: AgentUnderTest) -> str:
    for group in agent.status()["rules"]["groups"]:
        for rule in group["rules"]:
            if rule["name"] == "ReactionBench":
                return str(rule.get("state"))
    return "missing"


def reset_knob(agent: AgentUnderTest) -> None:
    token = (agent.data_dir / "control.token").read_text().strip()
    httpx.put(f"{agent.engine_url}/control/knobs", json={"max_batch_size": 32}, timeout=30,
              headers={"Authorization": f"Bearer {token}"}).raise_for_status()


def actuator_alone_seconds(agent: AgentUnderTest, repeats: int) -> list[float]:
    """The same knob change as the rule makes, PUT to /control directly (the actuator without the rule path)."""
    token = (agent.data_dir / "control.token").read_text().strip()
    durations = []
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
        for index in range(repeats):
            value = 16 if index % 2 == 0 else 32
            started = time.perf_counter()
            client.put(f"{agent.engine_url}/control/knobs", json={"max_batch_size": value}).raise_for_status()
            durations.append(time.perf_counter() - started)
        client.put(f"{agent.engine_url}/control/knobs", json={"max_batch_size": 32}).raise_for_status()
    return durations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--interval", type=float, default=1.0, help="rule group evaluation interval, seconds")
    parser.add_argument("--for", dest="for_seconds", type=float, default=2.0, help="the rule's for:, seconds")
    parser.add_argument("--settle", type=float, default=2.0, help="verify-after-apply settle time, seconds")
    args = parser.parse_args()
    trials = args.trials * (2 if args.full else 1)

    work = Path(REPO_ROOT / ".cache" / "bench-reaction")
    work.mkdir(parents=True, exist_ok=True)
    rules_dir = work / "rules"
    rules_dir.mkdir(exist_ok=True)
    (rules_dir / "reaction.yaml").write_text(f"""groups:
  - name: reaction
    interval: {args.interval:g}s
    rules:
      - alert: ReactionBench
        expr: inference_latency_p99_seconds > {THRESHOLD_SECONDS:g}
        for: {args.for_seconds:g}s
        actions:
          - set_knob: {{knob: max_batch_size, value: 16}}
            cooldown: 0s
            verify: {{settle: {args.settle:g}s, direction: lower, tolerance: 0}}
""")
    run_dir = work / f"run-{int(time.time())}"
    run_dir.mkdir()
    agent = AgentUnderTest(run_dir, build_demo_model(), {
        "sources": {"gpu": {"backend": "off"}, "otlp_receiver": {"token": RECEIVER_TOKEN}},
        "intervals": {"collect_seconds": 0.25, "evaluate_seconds": min(0.25, args.interval)},
        "server": {"slo_window_seconds": 2},
        "rules": {"paths": [str(rules_dir / "*.yaml")]},
        # hysteresis keeps the still-firing rule from re-applying right after a rollback (the reversal waits)
        "actions": {"cooldown_seconds": 0, "hysteresis_seconds": HYSTERESIS_SECONDS, "max_changes": 1000},
    })
    reactions: list[float] = []
    rollbacks: list[float] = []
    try:
        agent.wait_ready(300)
        endpoint = json.loads((agent.data_dir / "agent.json").read_text())["otlp_endpoint"]
        baseline = actuator_alone_seconds(agent, 20)
        last_rollback = 0.0
        for trial in range(trials):
            time.sleep(max(0.0, last_rollback + HYSTERESIS_SECONDS + 0.5 - time.time()))
            # the p99 gauge keeps its last value while no request arrives: fast requests push the slow ones
            # out of the 2 s window so the rule resolves before the next trial
            wait_for(lambda: slow_record(endpoint, 0.05) or rule_state(agent) == "inactive", 60,
                     "the rule to be inactive before a trial", interval_seconds=0.1)
            seen = len(agent.actions())
            sent_at = time.time()
            # a sustained breach: slow records keep the p99 gauge over the threshold (it is omitted, and the rule
            # resolves, once the window holds no request)
            applied = wait_for(lambda seen=seen: slow_record(endpoint, 5.0) or  # type: ignore[misc]
                               [e for e in agent.actions()[seen:] if e["outcome"] == "applied"], 60,
                               f"trial {trial}: the applied change", interval_seconds=0.2)[0]
            while True:  # keep the signal bad through the settle time so verify rolls the change back
                slow_record(endpoint, 8.0)
                rolled = [e for e in agent.actions()[seen:] if e["outcome"] in ("rolled_back", "verified")]
                if rolled:
                    break
                time.sleep(0.2)
            breach = first_breach_seconds(agent.api_url, sent_at - 0.01)
            if breach is None:
                raise RuntimeError(f"trial {trial}: no breaching sample found in the store")
            reaction = iso_seconds(applied["@timestamp"]) - breach
            reactions.append(reaction)
            if rolled[0]["outcome"] == "rolled_back":
                last_rollback = iso_seconds(rolled[0]["@timestamp"])
                rollbacks.append(last_rollback - iso_seconds(applied["@timestamp"]) - args.settle)
            else:  # verified: put the knob back for the next trial
                reset_knob(agent)
            print(f"trial {trial + 1:2d}/{trials}: reaction {reaction:.3f} s, verify -> {rolled[0]['outcome']}",
                  flush=True)
    finally:
        code = agent.stop()
    if code != 0:
        print(f"agent exited with {code}; see {agent.log_path}", file=sys.stderr)

    target = args.interval + args.for_seconds + 1.0
    figures = {
        "reaction_p50_seconds": percentile(reactions, 0.5),
        "reaction_p99_seconds": percentile(reactions, 0.99),
        "reaction_max_seconds": max(reactions),
        "reaction_target_seconds": target,
        "rule_for_seconds": args.for_seconds,  # the floor: a rule cannot fire before its for: has passed
        "rule_for_plus_interval_seconds": args.for_seconds + args.interval,  # worst case of the evaluation grid
        "actuator_alone_p50_seconds": percentile(baseline, 0.5),
        "actuator_alone_p99_seconds": percentile(baseline, 0.99),
        "verify_settle_seconds": args.settle,
        "rollback_after_settle_p50_seconds": percentile(rollbacks, 0.5) if rollbacks else float("nan"),
        "rollback_after_settle_p99_seconds": percentile(rollbacks, 0.99) if rollbacks else float("nan"),
        "rolled_back_trials": float(len(rollbacks)),
        "trials": float(len(reactions)),
    }
    width = max(len(k) for k in figures)
    print(f"\n{'figure':<{width}}  value")
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:.3f}")
    verdict = "meets" if figures["reaction_p99_seconds"] <= target else "MISSES"
    print(f"\nreaction p99 {figures['reaction_p99_seconds']:.3f} s {verdict} the target {target:.1f} s "
          f"(interval {args.interval:g} s + for {args.for_seconds:g} s + 1 s); "
          f"mean {statistics.fmean(reactions):.3f} s")
    if args.json:
        from bench.common import write_json

        write_json(args.json, figures, extra={"settings": {"trials": trials, "interval_seconds": args.interval,
                                                           "for_seconds": args.for_seconds,
                                                           "settle_seconds": args.settle}})
    return 0 if verdict == "meets" else 1


if __name__ == "__main__":
    sys.exit(main())
