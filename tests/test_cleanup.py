import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.cleanup import Cleanup
from appliance.store import CaptureStore, IndexReader
from hw.clock import ManualClock


class FakeDisk:
    """A filesystem of ``total`` bytes whose free space is ``base_free`` plus what the store's
    files do not use: deleting captures really frees space."""

    def __init__(self, store, total, base_free):
        self.store, self.total, self.base_free = store, total, base_free

    def __call__(self, path):
        data = self.store.data_dir
        files = [*(data / "media").rglob("*.*"), *(data / "thumbnails").rglob("*.*")]
        used_by_store = sum(p.stat().st_size for p in files)
        free = self.base_free - used_by_store
        return shutil._ntuple_diskusage(self.total, self.total - free, free)


def fill(store, photo, n):
    clock = ManualClock()
    return [store.add(photo, None, timestamp=clock.now(), trigger="motion") for _ in range(n)]


def test_nothing_is_deleted_above_the_start_threshold(store, photo):
    rows = fill(store, photo, 3)
    disk = FakeDisk(store, total=100 * len(photo), base_free=20 * len(photo))  # 17 % free
    result = Cleanup(store, start_free_percent=10, stop_free_percent=20, disk_usage=disk).run()
    assert result.deleted == 0
    assert len(IndexReader(store.data_dir).latest(10)) == len(rows)


def test_oldest_unprotected_go_first_until_the_stop_threshold(store, photo):
    rows = fill(store, photo, 20)
    store.set_protected(rows[0]["id"], True)
    # A disk of 100 photos with 25 free before these 20 captures: 5 % free now.
    disk = FakeDisk(store, total=100 * len(photo), base_free=25 * len(photo))

    result = Cleanup(store, start_free_percent=10, stop_free_percent=20, disk_usage=disk).run()

    # 15 photos must go to reach 20 % free: the oldest unprotected ones, in seq order.
    assert result.deleted == 15
    remaining = [r["id"] for r in IndexReader(store.data_dir).latest(20)][::-1]
    assert remaining == [rows[0]["id"]] + [r["id"] for r in rows[16:]]
    assert result.free_percent_before == pytest.approx(5)
    assert result.free_percent_after == pytest.approx(20)


def test_protected_captures_are_never_deleted(store, photo, caplog):
    rows = fill(store, photo, 4)
    for row in rows:
        store.set_protected(row["id"], True)
    disk = FakeDisk(store, total=100 * len(photo), base_free=5 * len(photo))
    result = Cleanup(store, start_free_percent=10, stop_free_percent=20, disk_usage=disk).run()
    assert result.deleted == 0
    assert len(IndexReader(store.data_dir).latest(10)) == 4
    assert "only protected captures remain" in caplog.text


# The photo fixture is immutable bytes, so sharing it between examples is safe.
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 12),
    protected=st.sets(st.integers(0, 11)),
    base_free=st.integers(0, 30),
)
def test_cleanup_choice_properties(tmp_path_factory, photo, n, protected, base_free):
    """Whatever the state: protected captures survive, deletion is oldest-first by seq, and cleanup
    stops as soon as the stop threshold is met or nothing unprotected is left."""
    store = CaptureStore(tmp_path_factory.mktemp("data"))
    rows = fill(store, photo, n)
    for i in protected & set(range(n)):
        store.set_protected(rows[i]["id"], True)
    disk = FakeDisk(store, total=100 * len(photo), base_free=base_free * len(photo))
    result = Cleanup(store, start_free_percent=10, stop_free_percent=20, disk_usage=disk).run()
    left = {r["id"] for r in IndexReader(store.data_dir).latest(100)}
    store.close()

    deleted = [r for r in rows if r["id"] not in left]
    assert all(rows.index(r) not in protected for r in deleted)
    unprotected = [r for i, r in enumerate(rows) if i not in protected]
    assert deleted == unprotected[: len(deleted)]  # a prefix in seq order
    if result.free_percent_before >= 10:
        assert deleted == []
    elif len(deleted) < len(unprotected):
        assert result.free_percent_after >= 20
        # and not one capture more than needed
        assert result.free_percent_after - 100 * len(photo) / disk.total < 20


def test_stop_below_start_is_rejected(store):
    with pytest.raises(ValueError):
        Cleanup(store, start_free_percent=20, stop_free_percent=10)
