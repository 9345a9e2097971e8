"""Large indexes made fast for the cleanup and web figures (:mod:`appliance.store.synthetic`),
with a progress line."""

import datetime

from appliance.bench.measuring import _progress
from appliance.store import CaptureStore
from appliance.store.synthetic import RECENT_CAPTURES, grow

__all__ = ["RECENT_CAPTURES", "_grow_index"]


def _grow_index(store: CaptureStore, rows: int, *, total: int, now: datetime.datetime) -> None:
    """:func:`appliance.store.synthetic.grow`, telling its progress on the terminal."""
    grow(store, rows, total=total, now=now, progress=_progress)
