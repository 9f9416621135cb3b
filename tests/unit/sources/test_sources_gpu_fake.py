"""GPU source over the fakes: trace replay (recorded H100 trace and the 2-GPU event trace), simulated GPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dsagent.samples import Sample
from dsagent.sources.base import SourceError
from dsagent.sources.gpu import GpuSource
from dsagent.sources.gpu_backend import GpuReading, GpuUnavailable, decode_throttle_reasons
from dsagent.sources.gpu_fake import GpuLoad, ReplayGpuBackend, SimulatedGpuBackend
from dsagent.sources.gpu_trace import load_trace, record_trace


def by_gpu(samples: list[Sample], name: str) -> dict[str, float]:
    return {s.label("gpu_index"): s.value for s in samples if s.name == name}


def throttle_active(samples: list[Sample], gpu_index: str) -> set[str]:
    return {
        s.label("reason")
        for s in samples
        if s.name == "dsagent_gpu_clock_throttle_active" and s.label("gpu_index") == gpu_index and s.value == 1.0
    }


def test_two_gpu_trace_replays_sixty_frames_of_two_gpus(two_gpu_trace: Path) -> None:
    trace = load_trace(two_gpu_trace)
    assert len(trace.frames) == 60
    assert all([r.index for r in frame] == [0, 1] for frame in trace.frames)
    assert trace.frame_offsets_seconds[:3] == [0.0, 1.0, 2.0]


def test_replayed_samples_carry_gpu_labels_and_base_units(two_gpu_trace: Path) -> None:
    source = GpuSource(ReplayGpuBackend(two_gpu_trace), clock=lambda: 1000.0)
    samples = source.collect()
    gpu0 = [s for s in samples if s.label("gpu_index") == "0"]
    assert gpu0 and all(s.label("gpu_uuid").startswith("GPU-") and s.label("gpu_name") for s in gpu0)
    assert all(s.timestamp_seconds == 1000.0 for s in samples)
    assert by_gpu(samples, "dsagent_gpu_memory_total_bytes") == {"0": 85_520_809_984.0, "1": 85_520_809_984.0}
    assert throttle_active(samples, "0") == {"gpu_idle"}
    kinds = {s.name: s.kind for s in samples}
    assert kinds["dsagent_gpu_energy_joules_total"] == "counter"
    assert kinds["dsagent_gpu_power_draw_watts"] == "gauge"


def test_trace_throttle_and_xid_events_show_up_in_samples(two_gpu_trace: Path) -> None:
    source = GpuSource(ReplayGpuBackend(two_gpu_trace))
    frames = [source.collect() for _ in range(60)]
    # full load: both GPUs at the power cap
    assert "sw_power_cap" in throttle_active(frames[25], "0")
    # GPU 1 thermal slowdown 30-36 s only
    assert "hw_thermal_slowdown" in throttle_active(frames[32], "1")
    assert "hw_thermal_slowdown" not in throttle_active(frames[32], "0")
    assert "hw_thermal_slowdown" not in throttle_active(frames[40], "1")
    assert by_gpu(frames[32], "dsagent_gpu_temperature_celsius")["1"] >= 87
    # XID 13 on GPU 1 from 41 s
    assert by_gpu(frames[40], "dsagent_gpu_xid_errors_total") == {"0": 0.0, "1": 0.0}
    assert by_gpu(frames[41], "dsagent_gpu_xid_errors_total") == {"0": 0.0, "1": 1.0}
    assert not by_gpu(frames[41], "dsagent_gpu_last_xid")  # no sticky gauge: a counter and an event
    # GPU 1 cannot report application clocks: omitted for it, present for GPU 0
    assert set(by_gpu(frames[0], "dsagent_gpu_applications_sm_clock_hertz")) == {"0"}


def test_real_h100_trace_shows_power_cap_under_load_and_no_fan(real_h100_trace: Path) -> None:
    trace = load_trace(real_h100_trace)
    assert trace.meta.get("backend") == "nvml"
    source = GpuSource(ReplayGpuBackend(trace))
    frames = [source.collect() for _ in range(len(trace.frames))]
    utilization = [by_gpu(f, "dsagent_gpu_utilization_ratio")["0"] for f in frames]
    power = [by_gpu(f, "dsagent_gpu_power_draw_watts")["0"] for f in frames]
    assert min(utilization) == 0.0 and max(utilization) >= 0.99
    assert max(power) > 600 > min(power)
    assert any("sw_power_cap" in throttle_active(f, "0") for f in frames)
    # an H100 SXM has no fan: NVML says not supported, so the metric is absent, never 0
    assert all("dsagent_gpu_fan_speed_ratio" not in {s.name for s in f} for f in frames)


def test_replay_loops_by_default_and_ends_without_loop(two_gpu_trace: Path) -> None:
    looping = ReplayGpuBackend(two_gpu_trace)
    first = looping.read_all()
    for _ in range(59):
        looping.read_all()
    assert looping.read_all() == first
    once = GpuSource(ReplayGpuBackend(two_gpu_trace, loop=False))
    for _ in range(60):
        once.collect()
    with pytest.raises(SourceError, match="ended"):
        once.collect()


def test_missing_trace_file_is_unavailable_said_once(tmp_path: Path) -> None:
    source = GpuSource(ReplayGpuBackend(tmp_path / "absent.jsonl"))
    assert source.collect() == []
    assert source.unavailable_reason is not None and "absent.jsonl" in source.unavailable_reason


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ('{"t_seconds": 0}', "expected"),
        ('{"t_seconds": 0, "reading": {"index": 0, "uuid": "u", "name": "n", "utilisation": 1}}', "utilisation"),
        ('{"t_seconds": 0, "reading": {"index": 0, "name": "n"}}', "uuid"),
    ],
)
def test_bad_trace_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"meta": {}}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as raised:
        load_trace(path)
    assert "bad.jsonl:2" in str(raised.value)


def test_reading_json_round_trip_drops_absent_fields() -> None:
    reading = GpuReading(index=1, uuid="GPU-x", name="n", power_draw_watts=100.0, process_memory_bytes={42: 7})
    raw = reading.to_json_dict()
    assert "temperature_celsius" not in raw and raw["process_memory_bytes"] == {"42": 7}
    assert GpuReading.from_json_dict(json.loads(json.dumps(raw))) == reading


def test_decode_throttle_reasons() -> None:
    assert decode_throttle_reasons(0) == []
    assert decode_throttle_reasons(0x44) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert decode_throttle_reasons(0x10000) == []


def test_record_trace_writes_a_replayable_file(tmp_path: Path, two_gpu_trace: Path) -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    path = tmp_path / "recorded.jsonl"
    with path.open("w") as out:
        frames = record_trace(ReplayGpuBackend(two_gpu_trace), out, 4.5, 1.0, {"note": "t"}, lambda: now[0], sleep)
    assert frames == 5
    trace = load_trace(path)
    assert trace.frame_offsets_seconds == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert trace.meta["backend"] == "replay" and trace.meta["note"] == "t"


class TestSimulatedGpus:
    def make(self, load: GpuLoad, count: int = 2) -> tuple[SimulatedGpuBackend, list[float]]:
        now = [0.0]
        return SimulatedGpuBackend(count, load=lambda: load, clock=lambda: now[0], process_pid=99), now

    def test_utilization_memory_and_power_follow_the_load(self) -> None:
        idle, _ = self.make(GpuLoad(0.0, 0.0))
        busy, _ = self.make(GpuLoad(0.6, 0.5))
        idle_reading, busy_reading = idle.read_all()[0], busy.read_all()[0]
        assert idle_reading.utilization_ratio == 0.0 and busy_reading.utilization_ratio == pytest.approx(0.6)
        assert busy_reading.memory_used_bytes > idle_reading.memory_used_bytes  # type: ignore[operator]
        assert busy_reading.power_draw_watts > idle_reading.power_draw_watts  # type: ignore[operator]
        assert idle_reading.throttle_reasons_bitmask == 0x1  # gpu_idle
        assert busy_reading.throttle_reasons_bitmask == 0
        assert busy_reading.process_memory_bytes and 99 in busy_reading.process_memory_bytes
        assert idle_reading.process_memory_bytes == {}

    def test_full_load_hits_the_power_cap_and_lowers_the_sm_clock(self) -> None:
        backend, _ = self.make(GpuLoad(1.0, 0.9), count=1)
        (reading,) = backend.read_all()
        assert reading.power_draw_watts == pytest.approx(reading.power_limit_watts)
        assert decode_throttle_reasons(reading.throttle_reasons_bitmask or 0) == ["sw_power_cap"]
        assert reading.sm_clock_hertz < reading.sm_clock_max_hertz  # type: ignore[operator]

    def test_temperature_and_energy_integrate_over_time(self) -> None:
        backend, now = self.make(GpuLoad(1.0, 0.5), count=1)
        start = backend.read_all()[0]
        now[0] = 60.0
        later = backend.read_all()[0]
        assert later.temperature_celsius > start.temperature_celsius  # type: ignore[operator]
        assert later.energy_joules_total == pytest.approx(700.0 * 60.0)

    def test_gpus_differ_and_have_distinct_uuids(self) -> None:
        backend, _ = self.make(GpuLoad(0.8, 0.5), count=8)
        readings = backend.read_all()
        assert len({r.uuid for r in readings}) == 8
        assert readings[0].utilization_ratio > readings[7].utilization_ratio  # type: ignore[operator]

    def test_zero_gpus_is_refused(self) -> None:
        with pytest.raises(ValueError, match="gpu_count"):
            SimulatedGpuBackend(0)


def test_gpu_unavailable_from_backend_mid_run_is_a_source_error() -> None:
    class Failing:
        name = "failing"

        def open(self) -> None: ...

        def read_all(self) -> list[GpuReading]:
            raise GpuUnavailable("gone")

        def close(self) -> None: ...

    with pytest.raises(SourceError, match="gone"):
        GpuSource(Failing()).collect()


def test_recorder_command_without_a_gpu_exits_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dsagent.sources.gpu_trace import main
    from dsagent.sources.nvml_backend import NvmlBackend

    try:
        NvmlBackend().open()
    except GpuUnavailable:
        pass
    else:
        pytest.skip("this machine has a GPU: the recorder would record for real")
    assert main(["--out", str(tmp_path / "t.jsonl"), "--seconds", "1"]) == 2
    assert "no GPU to record" in capsys.readouterr().err
