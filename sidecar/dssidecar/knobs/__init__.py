"""The engine's runtime knobs in one package: the knob table and validation (`controller`), applying
them to the real engine through its narrow API (`engine_target`), and their Prometheus view (`metrics`).

Why a package: every knob is one entry in `EngineKnobTarget.knob_specs()` and one branch of its
`install()`; nothing here touches an engine's private state (the engine exposes set_limits,
resize_kv_pool, replace_runner, warm_up, memory_figures). The HTTP side (dssidecar.api.control) imports
this package; this package never imports the API.
"""

from dssidecar.knobs.controller import (
    KnobApplyError,
    KnobChange,
    KnobController,
    KnobError,
    KnobSpec,
    KnobTarget,
    KnobUnsupportedError,
    KnobValidationError,
    validate_value,
)

__all__ = [
    "KnobApplyError",
    "KnobChange",
    "KnobController",
    "KnobError",
    "KnobSpec",
    "KnobTarget",
    "KnobUnsupportedError",
    "KnobValidationError",
    "validate_value",
]
