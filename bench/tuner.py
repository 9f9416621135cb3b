"""bench/tuner.py: does `dsagent tune --auto` (TPE) find the grid's best goodput in a quarter of the trials?

On the tiny demo model (CPU) with a fixed workload and a small knob space (48 points: max_batch_size x
max_num_batched_tokens x precision), one exhaustive grid search measures every point; then TPE runs with
a budget of 25 % of the grid's trials for three seeds. All runs use the same sidecar, workload, load
(closed loop), SLO and measurement windows, in this one process. Figures per seed: the best goodput TPE
found (its own measurement) relative to the grid's best, the grid's measurement of TPE's pick (so window
noise in TPE's own runs cannot flatter it), and the trials TPE needed to reach 95 % of the grid's best.
Also the time per trial and how much of it is warm-up, measurement and applying knobs.

Target (issue 13): median over seeds, TPE reaches >= 95 % of the grid's best goodput in <= 25 % of its
trials. The machine is shared and noisy: short windows make single measurements jumpy, which is why the
grid-measured value of TPE's pick is reported beside TPE's own figure.

    python bench/tuner.py [--full] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, add_common_arguments, environment, print_table, write_json  # noqa: E402

SPACE = ["max_batch_size=1,2,4,8,16,32", "max_num_batched_tokens=32,128,512,2048", "precision=fp32,bf16"]
GRID_POINTS = 48


def log(message: str) -> None:
    print(f"[tuner] {message}", file=sys.stderr, flush=True)


def demo_model() -> Path:
    from dssidecar.demo_model import write_demo_model

    target = REPO_ROOT / ".cache" / "bench-models" / "qwen2-tiny-seed0-steps0"
    if not (target / "manifest.json").exists():
        log(f"writing demo model {target}")
        write_demo_model(target, size="tiny", seed=0, arch="qwen2", train_steps=0)
    return target


def load_trials(output: Path) -> list[dict[str, Any]]:
    return list(json.loads((output / "trials.json").read_text())["trials"])


def goodput_of(trial: dict[str, Any]) -> float:
    """A trial's goodput when it was feasible (met the SLO), else 0: what "best" may be taken from."""
    if not trial["feasible"]:
        return 0.0
    return float(trial["figures"].get("request_goodput") or 0.0)


def key_of(knobs: dict[str, Any]) -> str:
    return json.dumps(knobs, sort_keys=True)


def trials_to_reach(trials: list[dict[str, Any]], threshold: float) -> int | None:
    """Measured trials (repeats excluded) until the best-so-far feasible goodput reaches `threshold`."""
    best, measured = 0.0, 0
    for trial in trials:
        if trial["repeat_of"] is not None:
            continue
        measured += 1
        best = max(best, goodput_of(trial))
        if best >= threshold:
            return measured
    return None


def timing(trials: list[dict[str, Any]]) -> dict[str, float]:
    from datetime import datetime

    measured = [t for t in trials if t["repeat_of"] is None and t["datetime_complete"] and t["datetime_start"]]
    walls = [(datetime.fromisoformat(t["datetime_complete"]) - datetime.fromisoformat(t["datetime_start"])).total_seconds()
             for t in measured]
    warmups = [float(t["warmup_seconds"] or 0.0) for t in measured]
    windows = [float(t["measure_seconds"] or 0.0) for t in measured]
    applies = [float(t["apply_seconds"] or 0.0) for t in measured]
    return {"trial_seconds": statistics.mean(walls), "warmup_seconds": statistics.mean(warmups),
            "measure_seconds": statistics.mean(windows), "apply_seconds": statistics.mean(applies)}


def confirm(url: str, token: str, points: dict[str, dict[str, Any]], rounds: int, warmup: float, window: float,
            concurrency: int, slo_p99: float) -> dict[str, list[float]]:
    """Re-measure each named point `rounds` times, interleaved (A B C A B C ...), so every point sees the same
    machine load; returns the goodput of each measurement (req/s meeting the per-request e2e SLO)."""
    import asyncio

    from dsagent.engines.builtin import BuiltinEngineAdapter
    from dsagent.loadgen.metrics import Slo
    from dsagent.loadgen.runner import LoadPlan, run_load
    from dsagent.loadgen.workload import load_workload

    adapter = BuiltinEngineAdapter(url, token)
    specs = load_workload("tiny").generate(4096, seed=0)
    plan = LoadPlan(concurrency=concurrency, warmup_seconds=warmup, duration_seconds=window)
    measured: dict[str, list[float]] = {name: [] for name in points}
    try:
        for round_number in range(rounds):
            for name, knobs in points.items():
                current = adapter.read_knobs()
                update = {k: v for k, v in knobs.items() if current.get(k) != v}
                if update:
                    adapter.apply_knobs(update)
                result = asyncio.run(run_load(url, specs, plan, slo=Slo(e2el_seconds=slo_p99)))
                measured[name].append(float(result.summary["request_goodput"]))
            log(f"confirmation round {round_number + 1}/{rounds}: "
                + " | ".join(f"{name} {values[-1]:.1f}" for name, values in measured.items()))
    finally:
        adapter.close()
    return measured


def tabular_tpe(grid: list[dict[str, Any]], budget: int, seed: int, slo_p99: float,
                sampler: str = "tpe") -> tuple[float, int | None]:
    """TPE (the tuner's own sampler settings) searching the grid's measured table instead of the engine: the
    search's sample efficiency on this landscape, free of the window-to-window noise of live trials.
    Returns (best goodput found in `budget` distinct points, distinct points needed to reach 95 % of the
    table's best or None)."""
    import optuna
    from dsagent.tune.search import SET_CONSTRAINT, TuneSettings, _sampler
    from dsagent.tune.space import Dimension, suggest_knobs

    table = {key_of(t["knobs"]): t for t in grid if t["repeat_of"] is None}
    dimensions = [Dimension("max_batch_size", (1, 2, 4, 8, 16, 32), True),
                  Dimension("max_num_batched_tokens", (32, 128, 512, 2048), True),
                  Dimension("precision", ("fp32", "bf16"), False)]
    settings = TuneSettings(sampler=sampler, seed=seed, max_trials=budget,  # type: ignore[arg-type]
                            slo_p99_e2el_seconds=slo_p99)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=_sampler(settings, dimensions, 0))
    best_possible = max(goodput_of(t) for t in table.values())
    seen: set[str] = set()
    best, reached = 0.0, None
    for _ in range(50 * budget):
        if len(seen) >= budget:
            break
        trial = study.ask()
        knobs = suggest_knobs(trial, dimensions)
        record = table[key_of(knobs)]
        p99 = float(record["figures"].get("p99_e2el_ms") or 1e9) / 1000.0
        if SET_CONSTRAINT:
            trial.set_constraint("p99_e2el", p99 - slo_p99)
        study.tell(trial, float(record["figures"].get("request_goodput") or 0.0))
        if key_of(knobs) not in seen:
            seen.add(key_of(knobs))
            best = max(best, goodput_of(record))
            if reached is None and best >= 0.95 * best_possible:
                reached = len(seen)
    return best, reached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--seeds", type=int, default=3, help="TPE runs (seeds 0..N-1)")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop requests in flight")
    parser.add_argument("--slo-p99", type=float, default=1.5, help="p99 end-to-end latency SLO (seconds)")
    parser.add_argument("--tabular-seeds", type=int, default=20,
                        help="TPE runs over the grid's measured table (no engine, no noise)")
    parser.add_argument("--confirm-rounds", type=int, default=3,
                        help="re-measurements of the grid's best and each TPE pick, interleaved")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "tuner",
                        help="where the grid and TPE reports go (each run replaces them)")
    args = parser.parse_args()
    warmup, window = (2.0, 6.0) if args.full else (0.5, 1.5)
    budget = GRID_POINTS // 4

    import shutil

    from dsagent.tune.engine import OwnSidecar
    from dsagent.tune.run import TuneRequest, tune_once

    if args.output.exists():
        shutil.rmtree(args.output)
    sidecar = OwnSidecar(args.output / "state", demo_model(), ["--device", "cpu", "--max-batch-size", "32"])
    log("starting the sidecar")
    sidecar.start()
    started = time.monotonic()
    try:
        def run(name: str, sampler: str, trials: int, seed: int, prune: bool) -> list[dict[str, Any]]:
            log(f"{name}: {sampler}, {trials} trials, seed {seed}, warm-up {warmup:g} s + window {window:g} s each")
            request = TuneRequest(engine_url=sidecar.url, token=sidecar.token, workload="tiny", slo_p99=args.slo_p99,
                                  max_trials=trials, sampler=sampler, seed=seed, knobs=SPACE, prune=prune,
                                  concurrency=args.concurrency, warmup_seconds=warmup, measure_seconds=window,
                                  output=args.output / name, quiet=True)
            result = tune_once(request)
            if result is None:
                raise SystemExit(f"{name} failed")
            return load_trials(args.output / name)

        grid = run("grid", "grid", GRID_POINTS, 0, prune=False)
        grid_by_point = {key_of(t["knobs"]): goodput_of(t) for t in grid if t["repeat_of"] is None}
        grid_best = max(grid_by_point.values())
        grid_best_point = max(grid_by_point, key=lambda k: grid_by_point[k])
        rows, per_seed = [], []
        for seed in range(args.seeds):
            trials = run(f"tpe-seed{seed}", "tpe", budget, seed, prune=True)
            feasible = [t for t in trials if t["repeat_of"] is None and goodput_of(t) > 0]
            own_best = max(feasible, key=goodput_of) if feasible else None
            own = goodput_of(own_best) if own_best else 0.0
            pick_on_grid = grid_by_point.get(key_of(own_best["knobs"]), 0.0) if own_best else 0.0
            reached = trials_to_reach(trials, 0.95 * grid_best)
            measured = sum(1 for t in trials if t["repeat_of"] is None)
            per_seed.append({"seed": seed, "own_ratio": own / grid_best, "pick_ratio": pick_on_grid / grid_best,
                             "trials": measured, "reached": reached, "timing": timing(trials),
                             "pick": own_best["knobs"] if own_best else None})
        tabular, tabular_random = [], []
        for seed in range(args.tabular_seeds):
            found, needed = tabular_tpe(grid, budget, seed, args.slo_p99)
            tabular.append((found / grid_best, needed))
            found, needed = tabular_tpe(grid, budget, seed, args.slo_p99, sampler="random")
            tabular_random.append((found / grid_best, needed))
        picks = {grid_best_point: json.loads(grid_best_point)}  # one entry per distinct point
        for entry in per_seed:
            if entry["pick"] is not None:
                picks[key_of(entry["pick"])] = entry["pick"]
        log(f"re-measuring the grid's best and the TPE picks ({len(picks)} distinct points), interleaved")
        confirmed = confirm(sidecar.url, sidecar.token, picks, args.confirm_rounds, warmup, window,
                            args.concurrency, args.slo_p99)
        grid_confirmed = statistics.median(confirmed[grid_best_point])
        for entry in per_seed:
            values = confirmed.get(key_of(entry["pick"])) if entry["pick"] is not None else None
            entry["confirmed_ratio"] = statistics.median(values) / grid_confirmed if values else 0.0
            own = entry["own_ratio"] * grid_best
            rows.append((f"TPE seed {entry['seed']}", entry["trials"], own, entry["own_ratio"],
                         entry["pick_ratio"], entry["confirmed_ratio"],
                         "-" if entry["reached"] is None else str(entry["reached"]),
                         json.dumps(entry["pick"]) if entry["pick"] else "-"))
    finally:
        sidecar.stop()
    total_seconds = time.monotonic() - started
    grid_timing = timing(grid)
    rows.insert(0, ("grid (exhaustive)", len([t for t in grid if t["repeat_of"] is None]), grid_best, 1.0, 1.0, 1.0,
                    "-", grid_best_point))
    median_own = statistics.median(s["own_ratio"] for s in per_seed)
    median_pick = statistics.median(s["pick_ratio"] for s in per_seed)
    median_confirmed = statistics.median(s["confirmed_ratio"] for s in per_seed)
    reached_all = [s["reached"] for s in per_seed]
    median_trials_to_95 = statistics.median(r if r is not None else budget + 1 for r in reached_all)
    met = median_confirmed >= 0.95  # within the 25 % budget by construction
    print_table(f"tuner: TPE ({budget} trials = 25 % of the grid) vs exhaustive grid ({GRID_POINTS} points), "
                f"tiny demo model, closed loop x{args.concurrency}, SLO p99 e2e <= {args.slo_p99:g} s",
                ["run", "trials measured", "best goodput req/s (own window)", "/ grid best", "grid's value of pick / grid best",
                 f"re-measured pick / grid pick (median of {args.confirm_rounds})", "trials to 95 % (own windows)",
                 "best knobs"], rows,
                caption=f"median over {args.seeds} seeds: re-measured TPE pick / grid pick {median_confirmed:.3f} "
                        f"(target >= 0.95 with {budget} trials = 25 % of the grid) -> {'met' if met else 'NOT met'}; "
                        f"single-window figures: TPE best / grid best {median_own:.3f}, grid's value of the pick "
                        f"{median_pick:.3f}, trials to 95 % {median_trials_to_95:g}. Machine shared and noisy "
                        f"(windows {window:g} s): the grid's best of 48 single windows is inflated by noise, which is "
                        f"why the picks are re-measured side by side.")
    tabular_ratios = [ratio for ratio, _ in tabular]
    tabular_needed = [needed if needed is not None else budget + 1 for _, needed in tabular]
    tabular_met = statistics.median(tabular_ratios) >= 0.95  # the best within the budget, median over seeds
    random_ratios = [ratio for ratio, _ in tabular_random]
    random_needed = [needed if needed is not None else budget + 1 for _, needed in tabular_random]
    print_table(f"TPE over the grid's measured table ({args.tabular_seeds} seeds, {budget} distinct points each): "
                "the search alone, without live-window noise",
                ["figure", "TPE median", "TPE min", "TPE max", "random median (baseline)"],
                [("best found / table best", statistics.median(tabular_ratios), min(tabular_ratios),
                  max(tabular_ratios), statistics.median(random_ratios)),
                 ("points to reach 95 % (budget+1 = not reached)", statistics.median(tabular_needed),
                  min(tabular_needed), max(tabular_needed), statistics.median(random_needed)),
                 ("seeds reaching 95 % within the budget", sum(n <= budget for n in tabular_needed), "-", "-",
                  sum(n <= budget for n in random_needed))],
                caption=f"target (>= 0.95 of the best within {budget} = 25 % of the grid, median) -> "
                        f"{'met' if tabular_met else 'NOT met'}")
    tpe_timing = [s["timing"] for s in per_seed]
    timing_rows = [("grid", *grid_timing.values())] + [
        (f"TPE seed {s['seed']}", *s["timing"].values()) for s in per_seed]
    print_table("time per measured trial (seconds; the rest of a trial is optuna, /control reads and bookkeeping)",
                ["run", "trial wall", "warm-up", "measurement", "apply knobs"], timing_rows,
                caption=f"warm-up share of a grid trial {grid_timing['warmup_seconds'] / grid_timing['trial_seconds']:.0%},"
                        f" measurement {grid_timing['measure_seconds'] / grid_timing['trial_seconds']:.0%}; "
                        f"whole benchmark {total_seconds:.0f} s")
    if args.json:
        figures: dict[str, float | int | None] = {
            "grid_best_goodput_rps": grid_best, "grid_trials": GRID_POINTS, "tpe_trial_budget": budget,
            "tpe_best_over_grid_best_median": median_own, "tpe_pick_grid_value_over_grid_best_median": median_pick,
            "tpe_trials_to_95pct_median": median_trials_to_95, "target_met": int(met),
            "tpe_pick_over_grid_pick_remeasured_median": median_confirmed,
            "tabular_tpe_best_over_table_best_median": statistics.median(tabular_ratios),
            "tabular_tpe_points_to_95pct_median": statistics.median(tabular_needed),
            "tabular_target_met": int(tabular_met),
            "tabular_random_best_over_table_best_median": statistics.median(random_ratios),
            "tabular_random_points_to_95pct_median": statistics.median(random_needed),
            "grid_trial_seconds_mean": grid_timing["trial_seconds"], "grid_warmup_seconds_mean": grid_timing["warmup_seconds"],
            "grid_measure_seconds_mean": grid_timing["measure_seconds"],
            "grid_apply_seconds_mean": grid_timing["apply_seconds"],
            "tpe_trial_seconds_mean": statistics.mean(t["trial_seconds"] for t in tpe_timing),
            "benchmark_seconds": total_seconds,
        }
        for s in per_seed:
            figures[f"tpe_seed{s['seed']}_best_over_grid_best"] = s["own_ratio"]
            figures[f"tpe_seed{s['seed']}_trials_to_95pct"] = s["reached"]
            figures[f"tpe_seed{s['seed']}_pick_over_grid_pick_remeasured"] = s["confirmed_ratio"]
        env = environment()
        env.update({"warmup_seconds": warmup, "measure_seconds": window, "slo_p99_seconds": args.slo_p99,
                    "concurrency": args.concurrency, "space": SPACE})
        write_json(args.json, figures, env, extra={"seeds": per_seed, "grid_best_knobs": grid_best_point})


if __name__ == "__main__":
    main()
