"""``GET /metrics`` (``appliance.web.metrics``): the status as Prometheus text."""

import signal

import bottle
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from test_end_to_end import start, status_url
from web_client import DISK, bind_request, metric_samples

from appliance.status import StatusCollector
from appliance.store import IndexReader
from appliance.web.metrics import GATED_SOURCES, Metrics
from hw.exc import CameraTimeout


def test_metrics_are_prometheus_text_with_every_series(client, captures, hardware, store):
    for freed in (1000, 2500):
        store.record_cleanup_run(
            {"started_at": "2026-06-01T21:00:00Z", "reason": "space", "deleted": 1, "bytes_freed": freed,
             "free_bytes_before": 0, "total_bytes": DISK.total}
        )  # fmt: skip
    for now in (0, 1, 2):
        hardware.gate.admit("motion", now=now)
    hardware.gate.admit("button", now=0)
    hardware.gate.admit("button", now=1)
    hardware.simulated.inject_failure(CameraTimeout("no frame within 1 s"))
    with pytest.raises(CameraTimeout):
        hardware.camera.capture(1.0)
    response = client(**hardware.parts()).get("/metrics", status=200)
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    types_ = {family.name: family.type for family in text_string_to_metric_families(response.text)}
    assert types_ == {
        "appliance_captures": "gauge",
        "appliance_captures_last_hour": "gauge",
        "appliance_triggers_suppressed": "counter",
        "appliance_cleanup_runs": "counter",
        "appliance_cleanup_freed_bytes": "counter",
        "appliance_free_bytes": "gauge",
        "appliance_camera_failures": "counter",
        "appliance_cpu_temperature_celsius": "gauge",
    }
    assert metric_samples(response.text) == {
        ("appliance_captures", ()): 5,
        ("appliance_captures_last_hour", ()): 3,
        ("appliance_triggers_suppressed_total", (("source", "motion"),)): 2,
        ("appliance_triggers_suppressed_total", (("source", "button"),)): 1,
        ("appliance_triggers_suppressed_total", (("source", "timelapse"),)): 0,
        ("appliance_cleanup_runs_total", ()): 2,
        ("appliance_cleanup_freed_bytes_total", ()): 3500,
        ("appliance_free_bytes", ()): DISK.free,
        ("appliance_camera_failures_total", ()): 1,
        ("appliance_cpu_temperature_celsius", ()): 51.7,
    }


def test_metrics_leave_out_the_cpu_temperature_when_unknown(client, hardware):
    hardware.thermal.unlink()
    samples = metric_samples(client(**hardware.parts()).get("/metrics", status=200).text)
    assert not any(name == "appliance_cpu_temperature_celsius" for name, _ in samples)
    assert samples[("appliance_camera_failures_total", ())] == 0


def test_the_metrics_handler_answers_without_http(store, captures, hardware):
    reader = IndexReader(store.data_dir)
    collector = StatusCollector(reader, mode="simulation", started_monotonic=0, **hardware.parts())
    bind_request("/metrics")
    text = Metrics(collector.collect, reader).metrics().decode()
    assert bottle.response.content_type.startswith("text/plain; version=")
    samples = metric_samples(text)
    assert samples[("appliance_captures", ())] == collector.collect().captures.total == 5
    assert samples[("appliance_cpu_temperature_celsius", ())] == 51.7
    assert ("appliance_free_bytes", ()) in samples  # the real disk of the store


def test_a_fresh_appliance_has_a_sample_for_every_counter(tmp_path, run_config):
    """A counter without a sample is a series Prometheus has never seen: rate() and alerts on it
    stay empty until the first increment, instead of starting from 0."""
    process = start(tmp_path / "data", run_config)
    try:
        text = requests.get(status_url(process) + "metrics", timeout=5).text
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    counters = [family for family in text_string_to_metric_families(text) if family.type == "counter"]
    assert len(counters) == 4, text
    assert all(family.samples for family in counters), text
    suppressed = {
        labels for name, labels in metric_samples(text) if name == "appliance_triggers_suppressed_total"
    }
    assert suppressed == {(("source", source),) for source in ("button", "motion", "timelapse")}
    assert GATED_SOURCES == ("button", "motion", "timelapse")  # manual is never held back


def test_suppressed_triggers_have_a_zero_sample_per_source_without_a_gate(client, captures):
    samples = metric_samples(client().get("/metrics", status=200).text)
    assert {labels: value for (name, labels), value in samples.items()
            if name == "appliance_triggers_suppressed_total"} == {
        (("source", source),): 0 for source in GATED_SOURCES
    }  # fmt: skip
