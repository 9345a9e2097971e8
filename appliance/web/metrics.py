"""``GET /metrics``: the status as Prometheus metrics (text format), read at each scrape."""

from collections.abc import Callable

import bottle
import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from appliance.offloader import STATES
from appliance.status import Status
from appliance.store import IndexReader
from hw.triggers import SOURCES, UNGATED

# The labels of appliance_triggers_suppressed_total, each with a sample from start-up on (0 until a
# trigger of that source is held back), so that rate() and alerts see the series before the first.
GATED_SOURCES = tuple(source for source in SOURCES if source not in UNGATED)


class Metrics:
    """The handler of ``/metrics``.

    :param status: returns the :class:`~appliance.status.Status` now.
    :param reader: the index (the cleanup runs' totals).
    """

    def __init__(self, status: Callable[[], Status], reader: IndexReader):
        self._registry = prometheus_client.CollectorRegistry()
        self._registry.register(_Collector(status, reader))

    def metrics(self) -> bytes:
        """Every series, in Prometheus's text format."""
        bottle.response.content_type = prometheus_client.CONTENT_TYPE_LATEST
        return prometheus_client.generate_latest(self._registry)


class _Collector:
    """The status as Prometheus metrics, read at each scrape (a custom collector, as
    prometheus_client documents for values kept elsewhere)."""

    def __init__(self, status: Callable[[], Status], reader: IndexReader):
        self._status, self._reader = status, reader

    def collect(self):
        status = self._status()
        captures = GaugeMetricFamily("appliance_captures", "Captures in the index.")
        captures.add_metric([], status.captures.total)
        yield captures
        hour = GaugeMetricFamily("appliance_captures_last_hour", "Captures of the last hour.")
        hour.add_metric([], status.captures.last_hour)
        yield hour
        suppressed = CounterMetricFamily(
            "appliance_triggers_suppressed",
            "Triggers counted but not captured since start-up.",
            labels=["source"],
        )
        counts = dict.fromkeys(GATED_SOURCES, 0) | (status.triggers.suppressed if status.triggers else {})
        for source, count in counts.items():
            suppressed.add_metric([source], count)
        yield suppressed
        runs, freed = self._reader.cleanup_totals()
        cleanup_runs = CounterMetricFamily("appliance_cleanup_runs", "Cleanup runs recorded in the index.")
        cleanup_runs.add_metric([], runs)
        yield cleanup_runs
        freed_bytes = CounterMetricFamily("appliance_cleanup_freed_bytes", "Bytes freed by cleanup runs.")
        freed_bytes.add_metric([], freed)
        yield freed_bytes
        if status.disk:
            free = GaugeMetricFamily("appliance_free_bytes", "Free bytes on the data filesystem.")
            free.add_metric([], status.disk.free_bytes)
            yield free
        failures = CounterMetricFamily("appliance_camera_failures", "Camera failures since start-up.")
        failures.add_metric([], status.camera.total_failures if status.camera else 0)
        yield failures
        yield from _offload_metrics(status)
        yield from _mqtt_metrics(status)
        temperature = status.system.cpu_temperature_c if status.system else None
        if temperature is not None:
            gauge = GaugeMetricFamily("appliance_cpu_temperature_celsius", "CPU temperature.")
            gauge.add_metric([], temperature)
            yield gauge


def _mqtt_metrics(status: Status):
    """With MQTT on: whether it is connected, the capture events waiting, delivered and dropped."""
    mqtt = status.mqtt
    if mqtt is None:
        return
    connected = GaugeMetricFamily("appliance_mqtt_connected", "1 when connected to the MQTT broker.")
    connected.add_metric([], int(mqtt.state == "connected"))
    yield connected
    queued = GaugeMetricFamily("appliance_mqtt_queued", "Capture events not yet acknowledged by the broker.")
    queued.add_metric([], mqtt.queued)
    yield queued
    published = CounterMetricFamily("appliance_mqtt_published", "Capture events the broker acknowledged.")
    published.add_metric([], mqtt.published)
    yield published
    dropped = CounterMetricFamily(
        "appliance_mqtt_dropped", "Capture events dropped while the broker was away (the queue was full)."
    )
    dropped.add_metric([], mqtt.dropped)
    yield dropped


def _offload_metrics(status: Status):
    """Per offload target: its state (one series per state, 1 for the one it is in), what is
    pending, the rate of the run under way, and whether the stick is safe to remove."""
    if not status.offload:
        return
    state = GaugeMetricFamily(
        "appliance_offload_state",
        "The offload target's state (1 for the one it is in).",
        labels=["target", "state"],
    )
    pending = GaugeMetricFamily(
        "appliance_offload_pending", "Captures not yet on the target.", labels=["target"]
    )
    pending_bytes = GaugeMetricFamily(
        "appliance_offload_pending_bytes", "Bytes of the captures not yet on the target.", labels=["target"]
    )
    rate = GaugeMetricFamily(
        "appliance_offload_rate_bytes_per_second", "Copy rate of the run under way.", labels=["target"]
    )
    safe = GaugeMetricFamily(
        "appliance_offload_safe_to_remove", "1 when the stick may be pulled out now.", labels=["target"]
    )
    for target in status.offload:
        for name in STATES:
            state.add_metric([target.target, name], 1 if target.state == name else 0)
        pending.add_metric([target.target], target.pending_captures)
        pending_bytes.add_metric([target.target], target.pending_bytes)
        rate.add_metric([target.target], target.rate_bytes_per_s or 0)
        safe.add_metric([target.target], 1 if target.safe_to_remove else 0)
    yield from (state, pending, pending_bytes, rate, safe)
