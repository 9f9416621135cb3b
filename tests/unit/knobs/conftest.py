"""Fixtures for the knob unit tests."""

from __future__ import annotations

import pytest
from dssidecar.knobs import KnobController
from knob_fakes import FakeKnobTarget


@pytest.fixture()
def fake_target() -> FakeKnobTarget:
    return FakeKnobTarget()


@pytest.fixture()
def controller(fake_target: FakeKnobTarget) -> KnobController:
    return KnobController(fake_target)
