"""`dsagent tune`: search the engine's live knobs for the best goodput under a latency SLO (optuna), write a
report with plots and a profile, and roll a profile out as guarded, staged Decisions (`tune apply`)."""
