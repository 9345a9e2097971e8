"""The status contract: one collector feeds the page, ``/api/status``, ``/healthz``, ``/metrics``
and systemd's ``STATUS=`` line; the JSON keeps the shape it had before the contract existed."""

import json
import signal
from pathlib import Path

from tests.test_end_to_end import start, status_url, wait_for_captures

FIXTURE = Path(__file__).with_name("fixtures") / "api_status.json"


# Objects keyed by data, not by the contract: problems by area, suppressed triggers by source.
MAPPINGS = {("problems",), ("triggers", "suppressed")}


def shape(value, path=()):
    """The keys of ``value``, all the way down (a list by its first item; None and scalars: a
    leaf; the objects in :data:`MAPPINGS`: "mapping")."""
    if path in MAPPINGS:
        return "mapping"
    if isinstance(value, dict):
        return {key: shape(item, (*path, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0], path)] if value and isinstance(value[0], dict) else []
    return None


def test_api_status_of_a_simulated_run_keeps_the_keys_it_had_before_the_status_contract(tmp_path, run_config):
    # The fixture is /api/status of `appliance run --simulate` taken on c9d1fb4, before the
    # status contract: a key renamed or dropped breaks every reader of the API.
    process = start(tmp_path / "data", run_config, "--trigger-interval-s", "0.2")
    try:
        status = wait_for_captures(status_url(process), 2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    assert shape(status) == shape(json.loads(FIXTURE.read_text()))
