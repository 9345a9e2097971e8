"""The remote offload in a real ``appliance run --simulate`` process, uploading with Debian's rclone
to a real S3 server (moto, tests/s3_server.py): every capture uploaded and verified while a reader
of the bucket never sees a table row before its photo, each failure state on the page, the API and
the metrics, a server that stalls and comes back, the bandwidth limit, SIGKILL at random moments
of uploads, and no credential anywhere the appliance speaks.

``UPLOAD_TEST_KILLS`` sets the number of kills (default 20, short enough for CI; e.g. 300 for the
long form, as ``OFFLOAD_TEST_KILLS`` does for tests/test_offload_run.py); ``UPLOAD_TEST_SEED``
replays a run.
"""

import csv
import datetime
import hashlib
import html
import io
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from test_end_to_end import status_url
from test_export import validate
from test_offload_run import fill
from test_upload import s3_client

from appliance.store import IndexReader

KILLS = int(os.environ.get("UPLOAD_TEST_KILLS", "20"))
DEPLOYMENT = "ridge-2026"
PREFIX = f"traps/{DEPLOYMENT}/"  # the deployment's folder in the bucket


def start(data_dir: Path, config: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    """``appliance run --simulate`` in a process group of its own (its rclone with it: a kill of
    the group is a power cut), its log appended to ``log`` (or dropped), its temporary files
    (an upload's staging folder, which a kill leaves behind) beside ``data_dir``."""
    temp = data_dir.parent / "tmp"
    temp.mkdir(parents=True, exist_ok=True)
    stderr = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--simulate", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", str(data_dir), "--config", str(config), *args],
            stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
            env=os.environ | {"TMPDIR": str(temp)},
        )  # fmt: skip
    finally:
        if log:
            stderr.close()


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == 0


def power_cut(process: subprocess.Popen) -> None:
    """SIGKILL to the appliance and every process it started (its rclone)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    process.stdout.close()


def upload_config(tmp_path: Path, run_config: Path, rclone_config: Path, remote: str, *extra: str) -> Path:
    config = tmp_path / "upload.toml"
    lines = [
        f'offload_remote = "{remote}"',
        f'offload_rclone_config = "{rclone_config}"',
        f'deployment_id = "{DEPLOYMENT}"',
        "latitude = 52.1",
        "longitude = 5.2",
        "offload_interval_s = 5",
        "offload_retry_max_s = 5",  # a failed try is tried again after 5 s, not 15
        *extra,
    ]
    config.write_text(run_config.read_text() + "\n".join(lines) + "\n")
    return config


def remote_target(url: str) -> dict:
    (target,) = [
        t for t in requests.get(url + "api/status", timeout=5).json()["offload"] if t["target"] == "remote"
    ]
    return target


def wait_for(url: str, test, what: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        target = remote_target(url)
        if test(target):
            return target
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout_s} s: {target}")


def metric_state(url: str) -> str:
    """The remote target's state as /metrics gives it (the one series at 1)."""
    text = requests.get(url + "metrics", timeout=5).text
    found = [
        labels
        for labels in re.findall(r"^appliance_offload_state\{(.*)\} 1\.0$", text, re.M)
        if 'target="remote"' in labels
    ]
    assert len(found) == 1, text
    return re.search(r'state="([^"]+)"', found[0])[1]


def assert_state_shown(url: str, state: str, reason_has: str) -> dict:
    """``state`` with a reason containing ``reason_has`` on /api/status, the page and /metrics."""
    target = remote_target(url)
    assert target["state"] == state and reason_has in target["reason"], target
    page = html.unescape(requests.get(url, timeout=5).text)
    assert f"Upload to {target['remote']}" in page
    assert f"{state}: {target['reason']}" in page
    assert metric_state(url) == state
    return target


def recorded(data_dir: Path) -> dict[str, str]:
    """``{capture id: sha256}`` recorded as uploaded (the store's ``offloads``, read-only)."""
    db = sqlite3.connect(f"file:{data_dir / 'captures.db'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT capture_id, sha256 FROM offloads WHERE target LIKE 'rclone:%'"))
    finally:
        db.close()


def captures(data_dir: Path) -> dict[str, dict]:
    return {row["id"]: row for row in IndexReader(data_dir).latest(1_000_000)}


def on_server(client, bucket: str) -> dict[str, str]:
    """``{capture id: MD5}`` of the photos under their final keys (a single PUT's ETag is the
    MD5 of the object)."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX + "media/"):
        for item in page.get("Contents", []):
            capture_id = item["Key"].removeprefix(PREFIX + "media/").removesuffix(".jpg")
            found[capture_id] = item["ETag"].strip('"')
    return found


def card_md5(data_dir: Path, row: dict) -> str:
    return hashlib.md5((data_dir / row["media_path"]).read_bytes()).hexdigest()


def puts(server, bucket: str) -> Counter:
    """PUT requests the server answered per capture id (photos only)."""
    media = f"/{bucket}/{PREFIX}media/"
    return Counter(r.path.removeprefix(media).removesuffix(".jpg") for r in server.requests("PUT", media))


class TableWatcher(threading.Thread):
    """A reader of the bucket while the appliance uploads: again and again, GET media.csv, then
    HEAD each photo it lists (once found, an object stays).  ``missing``: rows seen whose photo
    was not there; ``versions``: distinct media.csv seen; ``rows``: most rows seen at once."""

    def __init__(self, client, bucket: str):
        super().__init__(daemon=True)
        self.client, self.bucket = client, bucket
        self.stopping = threading.Event()
        self.missing: list[str] = []
        self.versions: set[str] = set()
        self.rows = 0
        self.seen: set[str] = set()

    def run(self) -> None:
        from botocore.exceptions import ClientError

        while not self.stopping.is_set():
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=PREFIX + "media.csv")["Body"].read()
            except ClientError:
                time.sleep(0.05)
                continue
            self.versions.add(hashlib.sha256(body).hexdigest())
            rows = list(csv.DictReader(io.StringIO(body.decode())))
            self.rows = max(self.rows, len(rows))
            for row in rows:
                key = PREFIX + row["filePath"]
                if key in self.seen:
                    continue
                try:
                    self.client.head_object(Bucket=self.bucket, Key=key)
                except ClientError:
                    self.missing.append(key)
                else:
                    self.seen.add(key)
            time.sleep(0.02)


def test_every_capture_is_uploaded_verified_and_no_table_ever_lists_a_photo_not_yet_there(
    tmp_path, run_config, s3_server, s3_bucket
):
    data_dir, log = tmp_path / "data", tmp_path / "appliance.log"
    fill(data_dir, 250)  # more than two batches, so that the tables are uploaded several times
    rclone_config = s3_server.rclone_config(tmp_path / "rclone.conf")
    config = upload_config(tmp_path, run_config, rclone_config, f"fleet:{s3_bucket}/traps/")
    client = s3_client(s3_server)
    watcher = TableWatcher(client, s3_bucket)
    watcher.start()
    try:
        process = start(data_dir, config, "--trigger-interval-s", "0.3", log=log)
        try:
            url = status_url(process)
            wait_for(url, lambda t: t["state"] == "uploading", "uploading")
            first = wait_for(url, lambda t: t["state"] == "done", "done", timeout_s=60)
            assert first["last_run"]["copied"] >= 250 and first["last_run"]["errors"] == []
            assert metric_state(url) == "done"
        finally:
            stop(process)
        # The captures taken since, without new ones: everything ends up there.
        process = start(data_dir, config, "--trigger-interval-s", "3600", log=log)
        try:
            url = status_url(process)
            wait_for(url, lambda t: t["state"] == "done" and t["pending_captures"] == 0, "all uploaded")
        finally:
            stop(process)
    finally:
        watcher.stopping.set()
        watcher.join(10)
    assert watcher.missing == [], "media.csv listed photos not yet uploaded"
    assert len(watcher.versions) >= 3 and watcher.rows >= 250  # it watched the tables grow
    rows = captures(data_dir)
    assert recorded(data_dir) == {capture_id: row["sha256"] for capture_id, row in rows.items()}
    server = on_server(client, s3_bucket)
    assert server == {capture_id: card_md5(data_dir, row) for capture_id, row in rows.items()}
    # The package, copied down, is a Camtrap DP package whose SHA256SUMS verify.
    package = tmp_path / "package"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix=PREFIX):
        for item in page["Contents"]:
            path = package / item["Key"].removeprefix(PREFIX)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(client.get_object(Bucket=s3_bucket, Key=item["Key"])["Body"].read())
    sums = subprocess.run(["sha256sum", "-c", "--strict", "--quiet", "SHA256SUMS"], cwd=package,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert sums.returncode == 0, sums.stdout + sums.stderr
    assert len((package / "SHA256SUMS").read_text().splitlines()) == len(rows)
    result = validate(package)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize(
    ("case", "state", "reason_has"),
    [
        ("wrong secret", "credentials refused", "SignatureDoesNotMatch"),
        ("unknown access key", "credentials refused", "InvalidAccessKeyId"),
        ("no bucket", "no bucket", "NoSuchBucket"),
        ("server down", "unreachable", "connection refused"),
    ],
)
def test_a_failed_upload_is_a_state_with_its_reason_on_the_page_the_api_and_the_metrics(
    tmp_path, run_config, s3_server, s3_bucket, case, state, reason_has
):
    data_dir = tmp_path / "data"
    fill(data_dir, 3)
    options = {
        "wrong secret": {"secret": "not-the-secret-at-all"},
        "unknown access key": {"access_key": "AKIANOBODYHASTHIS"},
        "server down": {"endpoint": "http://127.0.0.1:9"},  # discard: nothing listens there
    }.get(case, {})
    bucket = "no-such-bucket" if case == "no bucket" else s3_bucket
    rclone_config = s3_server.rclone_config(tmp_path / "rclone.conf", **options)
    config = upload_config(tmp_path, run_config, rclone_config, f"fleet:{bucket}/traps/")
    process = start(data_dir, config, "--trigger-interval-s", "3600")
    try:
        url = status_url(process)
        target = wait_for(url, lambda t: t["state"] == state, state)
        assert_state_shown(url, state, reason_has)
        assert target["next_try_at"] is not None and target["pending_captures"] >= 3
        status = requests.get(url + "api/status", timeout=5).json()
        reason = f"the upload to fleet:{bucket}/traps/ failed ({state}): {target['reason']}"
        assert status["problems"]["upload"] == reason and status["level"] == "warning"
        assert f"<strong>upload:</strong> {reason}</p>" in html.unescape(requests.get(url, timeout=5).text)
    finally:
        stop(process)
    assert recorded(data_dir) == {}
    assert not on_server(s3_client(s3_server), s3_bucket)


def test_outside_its_upload_window_nothing_is_uploaded_and_the_state_says_when_it_may(
    tmp_path, run_config, s3_server, s3_bucket
):
    data_dir = tmp_path / "data"
    fill(data_dir, 3)
    now = datetime.datetime.now()
    window = f"{(now + datetime.timedelta(hours=2)):%H:%M}-{(now + datetime.timedelta(hours=3)):%H:%M}"
    rclone_config = s3_server.rclone_config(tmp_path / "rclone.conf")
    config = upload_config(tmp_path, run_config, rclone_config, f"fleet:{s3_bucket}/traps/",
                           f'offload_windows = ["{window}"]')  # fmt: skip
    asked = len(s3_server.requests())
    process = start(data_dir, config, "--trigger-interval-s", "3600")
    try:
        url = status_url(process)
        time.sleep(3)  # three ticks of the uploader
        assert_state_shown(url, "waiting", f"uploads are allowed {window} (local time)")
        assert remote_target(url)["last_run"] is None
    finally:
        stop(process)
    assert recorded(data_dir) == {}
    assert s3_server.requests()[asked:] == []  # not even a look


def test_the_bandwidth_limit_holds_the_upload_rate_under_it(tmp_path, run_config, s3_server, s3_bucket):
    data_dir, limit = tmp_path / "data", 100 << 10  # rclone's "100k": 100 KiB/s
    fill(data_dir, 30)  # about 360 kB: 3.5 s at the limit
    rclone_config = s3_server.rclone_config(tmp_path / "rclone.conf")
    config = upload_config(tmp_path, run_config, rclone_config, f"fleet:{s3_bucket}/traps/",
                           'offload_bwlimit = "100k"')  # fmt: skip
    client = s3_client(s3_server)
    rows = captures(data_dir)
    arrived: dict[str, float] = {}  # capture id: when its object was first seen
    process = start(data_dir, config, "--trigger-interval-s", "3600")
    try:
        url = status_url(process)
        deadline = time.monotonic() + 60
        while len(arrived) < len(rows) and time.monotonic() < deadline:
            for capture_id in on_server(client, s3_bucket).keys() - arrived.keys():
                arrived[capture_id] = time.monotonic()
            time.sleep(0.05)
        wait_for(url, lambda t: t["state"] == "done", "done")
    finally:
        stop(process)
    assert arrived.keys() >= rows.keys()
    # From the first photo's arrival to the last: the bytes of all but the first, in that time.
    order = sorted(arrived, key=arrived.get)
    sent = sum(rows[capture_id]["bytes"] for capture_id in order[1:] if capture_id in rows)
    rate = sent / (arrived[order[-1]] - arrived[order[0]])
    print(f"upload rate with offload_bwlimit = 100k: {rate / 1024:.1f} KiB/s")
    assert rate < 1.1 * limit
    assert rate > 0.3 * limit  # or the measure measured nothing


def test_a_server_that_stalls_mid_upload_times_out_and_after_it_resumes_only_what_is_missing_is_sent(
    tmp_path, run_config, s3_server, s3_bucket
):
    data_dir = tmp_path / "data"
    # Few photos: rclone goes on with each file of a batch after one timed out (each taking
    # about 8 times offload_io_timeout_s: its retries), so a stall comes late in the batch.
    fill(data_dir, 12)
    rclone_config = s3_server.rclone_config(tmp_path / "rclone.conf")
    config = upload_config(tmp_path, run_config, rclone_config, f"fleet:{s3_bucket}/traps/",
                           "offload_io_timeout_s = 1", 'offload_bwlimit = "100k"')  # fmt: skip
    client = s3_client(s3_server)
    process = start(data_dir, config, "--trigger-interval-s", "3600")
    try:
        url = status_url(process)
        deadline = time.monotonic() + 30
        while len(puts(s3_server, s3_bucket)) < 8:  # 8 photos there, the next ones under way
            assert time.monotonic() < deadline, "no upload began"
            time.sleep(0.01)
        s3_server.pause()
        try:
            wait_for(url, lambda t: t["state"] == "timed out", "timed out", timeout_s=60)
            target = assert_state_shown(url, "timed out", "timeout")
            assert target["last_run"]["copied"] == 0 and recorded(data_dir) == {}
        finally:
            s3_server.resume()
        time.sleep(0.5)  # the server takes in what it had received before it stopped
        rows = captures(data_dir)
        there = {
            cid for cid, md5 in on_server(client, s3_bucket).items() if md5 == card_md5(data_dir, rows[cid])
        }
        before = puts(s3_server, s3_bucket)
        # Tried again offload_retry_max_s (5 s) later.
        wait_for(
            url, lambda t: t["state"] == "done" and t["pending_captures"] == 0, "all uploaded", timeout_s=40
        )
        assert metric_state(url) == "done"
    finally:
        stop(process)
    rows = captures(data_dir)
    assert len(there) >= 8
    assert recorded(data_dir) == {capture_id: row["sha256"] for capture_id, row in rows.items()}
    assert on_server(client, s3_bucket) == {cid: card_md5(data_dir, row) for cid, row in rows.items()}
    after = puts(s3_server, s3_bucket)
    assert all(after[cid] == before[cid] for cid in there), "a photo already there was sent again"
    assert all(after[cid] - before[cid] == 1 for cid in rows.keys() - there)
    resent = [cid for cid in rows.keys() - there if before[cid]]
    assert len(resent) <= 4  # at most those in flight (rclone's 4 transfers) are sent twice


def test_sigkill_during_uploads_never_records_what_is_not_on_the_server_and_the_next_run_sends_only_the_rest(
    tmp_path, run_config, s3_server, s3_bucket
):
    data_dir = tmp_path / "data"
    fill(data_dir, 150)
    rclone_config = s3_server.rclone_config(tmp_path / "rclone.conf")
    config = upload_config(tmp_path, run_config, rclone_config, f"fleet:{s3_bucket}/traps/")
    client = s3_client(s3_server)
    rng = random.Random(int(os.environ.get("UPLOAD_TEST_SEED", "19")))
    cut = 0  # kills that came in the middle of an upload run
    between = 0  # kills that left photos on the server not yet recorded
    for kill in range(KILLS):
        before, rows = len(recorded(data_dir)), captures(data_dir)
        there = {
            cid for cid, md5 in on_server(client, s3_bucket).items() if md5 == card_md5(data_dir, rows[cid])
        }
        sent_before = puts(s3_server, s3_bucket)
        # Capturing goes on beside the upload, so each run has something new to send.
        process = start(data_dir, config, "--trigger-interval-s", "0.2")
        status_url(process)
        # At a random moment of the upload: its photos going out, their check, the tables', the
        # records (a batch takes about 1 to 2 s from its first photo on).
        deadline = time.monotonic() + 20
        while sum(puts(s3_server, s3_bucket).values()) == sum(sent_before.values()):
            assert time.monotonic() < deadline, f"kill {kill}: no upload began"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))
        power_cut(process)
        rows = captures(data_dir)
        done = recorded(data_dir)
        server = on_server(client, s3_bucket)
        for capture_id, sha in done.items():
            assert rows[capture_id]["sha256"] == sha
            assert server.get(capture_id) == card_md5(data_dir, rows[capture_id]), (
                f"kill {kill}: {capture_id} recorded as uploaded and not on the server whole"
            )
        sent = puts(s3_server, s3_bucket)
        again = [cid for cid in there if sent[cid] > sent_before[cid]]
        assert again == [], f"kill {kill}: photos already on the server sent again: {again}"
        new_puts = sum((sent - sent_before).values())
        unrecorded = len(server.keys() - done.keys())
        print(
            f"kill {kill}: {new_puts} sent, {len(done) - before} recorded, {unrecorded} there unrecorded, "
            f"{len(rows) - len(done)} pending"
        )
        cut += new_puts > 0 and len(done) < len(rows)
        between += unrecorded > 0
    print(f"{KILLS} kills, {cut} in the middle of an upload run, {between} between a send and its record")
    assert cut >= KILLS // 2 and between >= 3  # or the test proves little about kills during uploads
    there = set(on_server(client, s3_bucket))
    sent_before = puts(s3_server, s3_bucket)
    process = start(data_dir, config, "--trigger-interval-s", "3600")
    try:
        url = status_url(process)
        wait_for(
            url, lambda t: t["state"] == "done" and t["pending_captures"] == 0, "all uploaded", timeout_s=60
        )
    finally:
        stop(process)
    rows = captures(data_dir)
    assert recorded(data_dir) == {capture_id: row["sha256"] for capture_id, row in rows.items()}
    assert on_server(client, s3_bucket) == {cid: card_md5(data_dir, row) for cid, row in rows.items()}
    sent = puts(s3_server, s3_bucket)
    assert [cid for cid in there if sent[cid] > sent_before[cid]] == []
    assert all(sent[cid] - sent_before[cid] == 1 for cid in rows.keys() - there)


def test_no_credential_appears_in_any_log_line_page_api_answer_or_metric(
    tmp_path, run_config, s3_server, s3_bucket
):
    data_dir, log = tmp_path / "data", tmp_path / "appliance.log"
    fill(data_dir, 3)
    secrets = [s3_server.credentials.access_key_id, s3_server.credentials.secret_access_key]
    wrong = tmp_path / "wrong.conf"
    s3_server.rclone_config(wrong, secret="Wr0ngSecretThatMustNotLeak")
    secrets.append("Wr0ngSecretThatMustNotLeak")
    good = s3_server.rclone_config(tmp_path / "rclone.conf")
    remote = f"fleet:{s3_bucket}/traps/"
    config = upload_config(tmp_path, run_config, wrong, remote)
    said = []
    process = start(data_dir, config, "--trigger-interval-s", "1", log=log)
    try:
        url = status_url(process)
        wait_for(url, lambda t: t["state"] == "credentials refused", "credentials refused")
        said += everything_it_says(url)
        config.write_text(config.read_text().replace(str(wrong), str(good)))
        process.send_signal(signal.SIGHUP)
        wait_for(url, lambda t: t["state"] == "done" and t["last_run"]["copied"] > 0, "uploaded")
        said += everything_it_says(url)
    finally:
        stop(process)
    said.append(log.read_text())
    for args in (["config", "--print-defaults"], ["config", "--check", str(config)]):
        result = subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True)
        said.append(result.stdout + result.stderr)
    assert "SignatureDoesNotMatch" in log.read_text()  # the failure was logged, with its reason
    for text in said:
        for secret in secrets:
            assert secret not in text
    assert recorded(data_dir)


def everything_it_says(url: str) -> list[str]:
    """The pages, the API's answers and the metrics, each as text."""
    status = requests.get(url + "api/status", timeout=5).json()
    capture = status["latest"][0]["id"]
    paths = ["", "captures", f"captures/{capture}", "api/status", "api/activity", "api/captures",
             f"api/captures/{capture}", "healthz", "metrics"]  # fmt: skip
    return [requests.get(url + path, timeout=5).text for path in paths]
