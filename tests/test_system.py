import dataclasses
import json
import shutil
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw.system import (
    HOT_C,
    Probes,
    SystemStatus,
    Throttled,
    clock_synced,
    cpu_temperature_c,
    disk_usage,
    throttled,
)

# Bit of ``vcgencmd get_throttled`` behind each flag (Raspberry Pi documentation, "get_throttled").
BITS = {
    "under_voltage_now": 0,
    "frequency_capped_now": 1,
    "throttled_now": 2,
    "soft_temperature_limit_now": 3,
    "under_voltage_since_boot": 16,
    "frequency_capped_since_boot": 17,
    "throttled_since_boot": 18,
    "soft_temperature_limit_since_boot": 19,
}


def script(path, body):
    """An executable shell script at ``path`` running ``body``; returns its path as a str."""
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def vcgencmd(tmp_path, output="throttled=0x50005", delay_s=0):
    """A stand-in for ``vcgencmd get_throttled`` that counts its runs in ``runs.log``."""
    return script(
        tmp_path / "vcgencmd",
        f"echo run >> '{tmp_path / 'runs.log'}'\nsleep {delay_s}\necho '{output}'",
    )


def runs(tmp_path):
    log = tmp_path / "runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


class FakeMonotonic:
    def __init__(self):
        self.now_s = 100.0

    def __call__(self):
        return self.now_s


def test_cpu_temperature_reads_millidegrees(tmp_path):
    temp = tmp_path / "temp"
    temp.write_text("48312\n")
    assert cpu_temperature_c(temp) == pytest.approx(48.312)


def test_cpu_temperature_is_none_when_file_missing(tmp_path):
    assert cpu_temperature_c(tmp_path / "absent") is None


@pytest.mark.parametrize("content", ["", "\n", "hot\n", "48.3\n", "48312 48000\n"])
def test_cpu_temperature_is_none_for_garbage(tmp_path, content):
    temp = tmp_path / "temp"
    temp.write_text(content)
    assert cpu_temperature_c(temp) is None


def test_cpu_temperature_is_none_for_a_directory(tmp_path):
    assert cpu_temperature_c(tmp_path) is None


def test_throttled_parses_command_output(tmp_path):
    state = throttled(command=[script(tmp_path / "cmd", "echo throttled=0x50005")])
    assert state == Throttled(
        raw=0x50005,
        under_voltage_now=True,
        frequency_capped_now=False,
        throttled_now=True,
        soft_temperature_limit_now=False,
        under_voltage_since_boot=True,
        frequency_capped_since_boot=False,
        throttled_since_boot=True,
        soft_temperature_limit_since_boot=False,
    )
    assert state.problems() == ["under-voltage", "throttled"]


def test_throttled_zero_means_no_problems(tmp_path):
    state = throttled(command=[script(tmp_path / "cmd", "echo throttled=0x0")])
    assert state.raw == 0
    assert not any(getattr(state, name) for name in BITS)
    assert state.problems() == []


def test_throttled_problems_name_every_condition_now_but_not_since_boot():
    assert Throttled.parse("throttled=0xf000f").problems() == [
        "under-voltage",
        "frequency capped",
        "throttled",
        "soft temperature limit",
    ]
    assert Throttled.parse("throttled=0xf0000").problems() == []


@pytest.mark.parametrize(("name", "bit"), BITS.items())
def test_each_flag_is_its_documented_bit(name, bit):
    state = Throttled.parse(f"throttled={hex(1 << bit)}\n")
    assert [flag for flag in BITS if getattr(state, flag)] == [name]


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_parse_round_trips_any_32_bit_value(n):
    state = Throttled.parse(f"throttled={hex(n)}")
    assert state.raw == n
    for name, bit in BITS.items():
        assert getattr(state, name) == bool(n >> bit & 1)


@pytest.mark.parametrize(
    "text",
    ["", "throttled=", "throttled=0x", "throttled=50005", "throttled=0xzz", "temp=48.3'C", "x throttled=0x0"],
)
def test_parse_rejects_other_output(text):
    with pytest.raises(ValueError):
        Throttled.parse(text)


@pytest.mark.parametrize(
    "body", ["echo 'VCHI initialization failed'", "echo throttled=0x0; exit 1", "exit 1", "true"]
)
def test_throttled_is_none_for_garbage_or_failure(tmp_path, body):
    assert throttled(command=[script(tmp_path / "cmd", body)]) is None


def test_throttled_is_none_when_command_hangs(tmp_path):
    command = [script(tmp_path / "cmd", "exec sleep 5")]
    start = time.monotonic()
    assert throttled(command=command, timeout_s=0.2) is None
    assert time.monotonic() - start < 4


def test_throttled_is_none_when_command_missing(tmp_path):
    assert throttled(command=[str(tmp_path / "vcgencmd"), "get_throttled"]) is None


def test_throttled_is_none_when_command_not_executable(tmp_path):
    command = tmp_path / "cmd"
    command.write_text("#!/bin/sh\necho throttled=0x0\n")
    assert throttled(command=[str(command)]) is None


def test_clock_synced_gives_the_kernels_answer():
    assert clock_synced() in (True, False)


def test_disk_usage_matches_shutil(tmp_path):
    assert disk_usage(tmp_path).total == shutil.disk_usage(tmp_path).total
    assert disk_usage(tmp_path / "absent") is None


def test_status_holds_every_probe_and_is_json_serialisable(tmp_path):
    temp = tmp_path / "temp"
    temp.write_text("48312\n")
    probes = Probes(tmp_path, thermal_path=temp, throttled_command=[vcgencmd(tmp_path)])
    status = probes.status()
    plain = dataclasses.asdict(status)
    assert json.loads(json.dumps(plain)) == plain | {"problems": list(status.problems)}
    assert status.cpu_temperature_c == pytest.approx(48.312)
    set_flags = {"under_voltage_now", "throttled_now", "under_voltage_since_boot", "throttled_since_boot"}
    assert plain["throttled"] == {"raw": 0x50005} | {name: name in set_flags for name in BITS}
    assert status.problems == ("under-voltage", "throttled")
    assert status.clock_synced in (True, False)


def test_status_off_a_pi_has_nones(tmp_path):
    probes = Probes(
        tmp_path / "absent",
        thermal_path=tmp_path / "no-temp",
        throttled_command=[str(tmp_path / "no-vcgencmd")],
    )
    status = probes.status()
    assert status.cpu_temperature_c is None
    assert status.throttled is None
    assert status.problems == ()


def test_status_is_cached_for_ttl(tmp_path):
    temp = tmp_path / "temp"
    temp.write_text("48312\n")
    monotonic = FakeMonotonic()
    probes = Probes(
        tmp_path, ttl_s=5.0, thermal_path=temp, throttled_command=[vcgencmd(tmp_path)], monotonic=monotonic
    )
    assert probes.status().cpu_temperature_c == pytest.approx(48.312)
    temp.write_text("50000\n")
    monotonic.now_s += 4.9
    assert probes.status().cpu_temperature_c == pytest.approx(48.312)
    assert runs(tmp_path) == 1
    monotonic.now_s += 0.1
    assert probes.status().cpu_temperature_c == pytest.approx(50.0)
    assert runs(tmp_path) == 2


def test_status_returned_cannot_be_changed_by_a_caller(tmp_path):
    probes = Probes(tmp_path, thermal_path=tmp_path / "no-temp", throttled_command=[vcgencmd(tmp_path)])
    with pytest.raises(dataclasses.FrozenInstanceError):
        probes.status().problems = ("mine",)
    assert isinstance(probes.status(), SystemStatus)
    assert probes.status().problems == ("under-voltage", "throttled")


@pytest.mark.parametrize(
    ("millidegrees", "problem"),
    [("85000", "CPU temperature 85 °C"), ("80000", "CPU temperature 80 °C"), ("79999", None)],
)
def test_problems_include_a_hot_cpu(tmp_path, millidegrees, problem):
    assert HOT_C == 80.0
    temp = tmp_path / "temp"
    temp.write_text(millidegrees + "\n")
    probes = Probes(tmp_path, thermal_path=temp, throttled_command=[vcgencmd(tmp_path, "throttled=0x0")])
    assert probes.status().problems == ((problem,) if problem else ())


def test_concurrent_calls_agree_and_probe_once(tmp_path):
    temp = tmp_path / "temp"
    temp.write_text("48312\n")
    probes = Probes(tmp_path, thermal_path=temp, throttled_command=[vcgencmd(tmp_path, delay_s=0.2)])
    barrier = threading.Barrier(8)
    results = []

    def call():
        barrier.wait()
        results.append(probes.status())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert all(result == results[0] for result in results)
    assert results[0].throttled.raw == 0x50005
    assert runs(tmp_path) == 1
