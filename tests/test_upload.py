"""appliance.upload: upload runs from a real store of real photos to a real S3 server (moto,
tests/s3_server.py), to a folder through rclone's local backend (the ``.incoming/`` and server-side
move path) and to a WebDAV server that reports no hashes (``rclone serve webdav``: every photo
read back), all with Debian's rclone; checked object by object, with ``sha256sum -c`` and the
Camtrap DP validator.

Some tests give a subclass of :class:`~appliance.rclone.Rclone` that does one real thing at one
moment of the run (deletes a capture while it is sent, overwrites an object before it is
verified): the race a cleanup or another writer of the bucket would win in the field, made
certain."""

import dataclasses
import datetime
import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from test_export import DEPLOYMENT, validate

from appliance import config as config_module
from appliance import rclone as rc
from appliance.offload import folder_name
from appliance.store import IndexReader
from appliance.upload import INCOMING, remote_target, upload_run

FOLDER = folder_name("ridge-2026")
ROOT = "traps"  # the folder under the bucket (or the WebDAV server's root) that offload_remote names


@pytest.fixture
def deployment(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_text(DEPLOYMENT)
    return config_module.load(path)


def s3_client(server):
    """A boto3 S3 client of ``server`` (tests/s3_server.S3Server) with its valid key: the bucket as
    another program sees it, independent of rclone."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.credentials.access_key_id,
        aws_secret_access_key=server.credentials.secret_access_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@dataclasses.dataclass
class Remote:
    """One remote of a test: ``root`` (what ``offload_remote`` says), the rclone ``config``, and
    how to see, change and count its objects without rclone: ``objects()`` ``{path under the
    deployment's folder: bytes}``, ``put(path, data)``, ``puts(path)`` (S3 only: the PUT requests
    the server answered for it)."""

    kind: str
    root: str
    config: Path
    objects: Callable[[], dict[str, bytes]]
    put: Callable[[str, bytes], None]
    puts: Callable[[str], int] | None = None
    folder: Path | None = None  # the deployment's folder on this machine, for a folder-backed one

    def rclone(self, **options) -> rc.Rclone:
        return rc.Rclone(str(self.config), **options)

    def sha256s(self) -> dict[str, str]:
        return {path: hashlib.sha256(data).hexdigest() for path, data in self.objects().items()}

    def download(self, to: Path) -> Path:
        """The deployment's folder, copied down to ``to`` (for the validator and sha256sum)."""
        for path, data in self.objects().items():
            (to / path).parent.mkdir(parents=True, exist_ok=True)
            (to / path).write_bytes(data)
        return to


def s3_remote(server, bucket: str, config: Path) -> Remote:
    client = s3_client(server)
    prefix = f"{ROOT}/{FOLDER}/"

    def objects() -> dict[str, bytes]:
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                data = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                # A single PUT's ETag is the MD5 of the object: what rclone's S3 hash reads.
                assert item["ETag"].strip('"') == hashlib.md5(data).hexdigest()
                found[item["Key"].removeprefix(prefix)] = data
        return found

    def put(path: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=prefix + path, Body=data)

    def puts(path: str) -> int:
        return len(server.requests("PUT", f"/{bucket}/{prefix}{path}"))

    return Remote("s3", f"fleet:{bucket}/{ROOT}/", server.rclone_config(config), objects, put, puts)


def folder_remote(kind: str, root: str, folder: Path, config: Path, url: str = "") -> Remote:
    """A remote whose files are those of the local ``folder``: rclone's local backend, or a WebDAV
    server serving it at ``url`` (its root), through which ``put`` then writes."""
    deployment = folder / FOLDER

    def objects() -> dict[str, bytes]:
        return {
            path.relative_to(deployment).as_posix(): path.read_bytes()
            for path in deployment.rglob("*")
            if path.is_file()
        }

    def put(path: str, data: bytes) -> None:
        if url:
            requests.put(f"{url}/{ROOT}/{FOLDER}/{path}", data=data, timeout=10).raise_for_status()
            return
        target = deployment / path
        stamp = target.stat().st_mtime_ns if target.exists() else None
        target.write_bytes(data)
        if stamp is not None:  # rot on a disk leaves the time alone
            os.utime(target, ns=(stamp, stamp))

    return Remote(kind, root, config, objects, put, folder=deployment)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def webdav(tmp_path, rclone_binary):
    """A WebDAV server (``rclone serve webdav``) on 127.0.0.1 serving ``tmp_path / "dav"``: a NAS
    that reports no hash of its files.  Yields ``(rclone config, served folder, its URL)``."""
    served, port = tmp_path / "dav", free_port()
    served.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    server = subprocess.Popen(
        [rclone_binary, "serve", "webdav", str(served), "--addr", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "rclone serve did not start"
                time.sleep(0.05)
        config = tmp_path / "webdav.conf"
        config.write_text(f"[nas]\ntype = webdav\nurl = http://127.0.0.1:{port}\nvendor = other\n")
        yield config, served, f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(params=["s3", "local", "webdav"])
def remote(request, tmp_path, rclone_binary) -> Remote:
    """Each kind of remote in turn: S3 (MD5 from the server, final keys), a local folder (SHA-256,
    ``.incoming/`` then a move) and WebDAV (no hash: read back, ``.incoming/`` then a move)."""
    config = tmp_path / "rclone.conf"
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        found = s3_remote(server, request.getfixturevalue("s3_bucket"), config)
    elif request.param == "local":
        config.write_text("")  # a folder needs no remote of the config
        found = folder_remote("local", str(tmp_path / "nas" / ROOT), tmp_path / "nas" / ROOT, config)
    else:
        config, served, url = request.getfixturevalue("webdav")
        found = folder_remote("webdav", f"nas:{ROOT}", served / ROOT, config, url)
    features = found.rclone().features(found.root)
    expected = {"s3": (("md5",), True), "local": (None, False), "webdav": ((), False)}[request.param]
    assert expected[0] is None or features.hashes == expected[0]  # webdav: nothing but a read-back
    assert features.bucket_based == expected[1]
    return found


def upload(remote: Remote, store, deployment, *, rclone: rc.Rclone | None = None, record_into_store=True,
           stop: threading.Event | None = None, **options):  # fmt: skip
    """An upload run as the wiring does it, each ``record`` then written to the store as the main
    loop would.  Returns (result, recorded ids)."""
    recorded = []
    result = upload_run(rclone or remote.rclone(), remote.root, IndexReader(store.data_dir), store.data_dir,
                        target=remote_target(remote.root), deployment=deployment,
                        record=lambda i, sha: recorded.append((i, sha)), stop=stop or threading.Event(),
                        **options)  # fmt: skip
    if record_into_store:
        now = datetime.datetime.now(datetime.UTC)
        for capture_id, sha in recorded:
            store.record_offloaded(capture_id, remote_target(remote.root), sha, now)
    return result, [capture_id for capture_id, _ in recorded]


def card_bytes(store, row) -> bytes:
    return (store.data_dir / row["media_path"]).read_bytes()


def check_package(remote: Remote, store, rows, tmp_path):
    """The deployment's folder on the remote holds exactly ``rows``' photos, byte for byte, listed
    by media.csv and SHA256SUMS (``sha256sum -c``), nothing half-sent; the package validates."""
    objects = remote.objects()
    photos = sorted(path for path in objects if path.startswith("media/"))
    assert photos == sorted(f"media/{row['id']}.jpg" for row in rows)
    assert not [path for path in objects if path.startswith(INCOMING)]
    for row in rows:
        assert objects[f"media/{row['id']}.jpg"] == card_bytes(store, row)
    local = remote.download(tmp_path / f"down-{time.monotonic_ns()}")
    sums = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=local, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert sums.returncode == 0, sums.stdout + sums.stderr
    assert sums.stdout.count(": OK") == len(rows)
    media_csv = (local / "media.csv").read_text()
    assert all(row["id"] in media_csv for row in rows)
    result = validate(local)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_photo_lands_verified_and_a_run_after_a_cut_one_sends_nothing_again(
    remote, store, filled, deployment, tmp_path
):
    # The first run's records lost, as when the appliance dies before its loop writes them.
    result, recorded = upload(remote, store, deployment, record_into_store=False)
    assert (result.copied, result.skipped, result.errors, result.reason) == (6, 0, [], None)
    assert result.bytes == sum(row["bytes"] for row in filled)
    assert sorted(recorded) == sorted(row["id"] for row in filled)
    check_package(remote, store, filled, tmp_path)
    before = {path: remote.puts(path) for path in remote.objects()} if remote.puts else None
    stamps = {path: os.stat(path).st_mtime_ns for path in _files(remote)}
    # Again: every photo is found there with the right hash; none is sent, all are recorded.
    again, recorded = upload(remote, store, deployment)
    assert (again.copied, again.skipped, again.errors, again.reason) == (0, 6, [], None)
    assert sorted(recorded) == sorted(row["id"] for row in filled)
    if before is not None:
        assert all(remote.puts(path) == before[path] for path in before if path.startswith("media/"))
    assert all(os.stat(path).st_mtime_ns == stamp for path, stamp in stamps.items() if "/media/" in str(path))
    # And once more: nothing pending, nothing done.
    third, recorded = upload(remote, store, deployment)
    assert (third.copied, third.skipped, third.reason, recorded) == (0, 0, None, [])
    check_package(remote, store, filled, tmp_path)


def _files(remote: Remote) -> list[Path]:
    """The files of a folder-backed remote (none for S3)."""
    return [path for path in remote.folder.rglob("*") if path.is_file()] if remote.folder else []


def test_a_run_after_a_cut_one_records_what_it_finds_there_at_its_first_checkpoint(
    s3_server, s3_bucket, store, filled, deployment, tmp_path
):
    remote = s3_remote(s3_server, s3_bucket, tmp_path / "rclone.conf")
    upload(remote, store, deployment, record_into_store=False)  # all sent, none recorded
    stop = threading.Event()

    def cut_after_two_batches(done, total, written):
        if done == 4:
            stop.set()

    # Cut again before its end: what it found there by then is recorded all the same.
    result, recorded = upload(remote, store, deployment, batch=2, stop=stop, progress=cut_after_two_batches)
    assert (result.kind, result.copied) == (rc.STOPPED, 0)
    assert recorded == [row["id"] for row in filled[:2]]


@pytest.mark.parametrize("remote", ["s3"], indirect=True)  # the card's side: the same for all
@pytest.mark.parametrize("md5_stored", [True, False], ids=["md5 from capture", "stored before m013"])
def test_a_photo_rotted_on_the_card_is_reported_and_neither_uploaded_nor_recorded(
    remote, store, filled, deployment, tmp_path, md5_stored
):
    if not md5_stored:  # captures stored before m013 (or recovered ones): the upload hashes the card
        store.db.execute("UPDATE captures SET md5 = NULL")
        store.db.conn.commit()
    rotten = filled[2]
    path = store.data_dir / rotten["media_path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flipped on the card
    path.write_bytes(bytes(data))
    result, recorded = upload(remote, store, deployment)
    assert result.copied == 5 and result.reason is None
    assert [line for line in result.errors if rotten["id"] in line] == [
        f"capture {rotten['id']}: its photo on the card differs from its recorded SHA-256; not uploaded"
    ]
    assert rotten["id"] not in recorded and len(recorded) == 5
    assert f"media/{rotten['id']}.jpg" not in remote.objects()
    check_package(remote, store, [row for row in filled if row is not rotten], tmp_path)


class DeletingRclone(rc.Rclone):
    """rclone, and the photo of the capture ``victim`` deleted from the card (unlinked, as
    cleanup does; from the thread that sends, while the run hashes the batch) just as the first
    copy of media starts."""

    def __init__(self, *args, store, victim, **kwargs):
        super().__init__(*args, **kwargs)
        self.store, self.victim, self.done = store, victim, False

    def copy(self, source, destination, names, **kwargs):
        if not self.done and "/media" in destination:
            (self.store.data_dir / self.victim["media_path"]).unlink()
            self.done = True
        return super().copy(source, destination, names, **kwargs)


@pytest.mark.parametrize("remote", ["s3", "local"], indirect=True)  # straight to media/, and via .incoming/
def test_a_capture_deleted_while_it_is_sent_is_skipped_and_the_others_are_recorded(
    remote, store, filled, deployment, tmp_path
):
    victim = filled[3]
    rclone = DeletingRclone(str(remote.config), store=store, victim=victim)
    result, recorded = upload(remote, store, deployment, rclone=rclone)
    assert rclone.done
    assert (result.copied, result.skipped, result.errors, result.reason) == (5, 1, [], None)
    assert sorted(recorded) == sorted(row["id"] for row in filled if row is not victim)
    check_package(remote, store, [row for row in filled if row is not victim], tmp_path)


class OverwritingRclone(rc.Rclone):
    """rclone, and the object ``media/<name>`` overwritten on the remote with ``data`` (another
    writer of the bucket, a disk that rots) just before the photos are verified after their
    upload."""

    def __init__(self, *args, remote: Remote, name: str, data: bytes, **kwargs):
        super().__init__(*args, **kwargs)
        self.remote, self.name, self.data, self.media_looks = remote, name, data, 0

    def hashes(self, folder, hash_type, names, **kwargs):
        if folder.endswith("/media"):
            self.media_looks += 1
            if self.media_looks == 1:  # a new folder: no first look for what a cut run left
                self.remote.put(f"media/{self.name}", self.data)
        return super().hashes(folder, hash_type, names, **kwargs)


def test_an_object_replaced_on_the_remote_before_it_is_verified_is_not_recorded(
    remote, store, filled, deployment, tmp_path
):
    victim = filled[1]
    rotten = bytearray(card_bytes(store, victim))
    rotten[len(rotten) // 2] ^= 0xFF  # the same size: only a hash (or reading it) tells them apart
    rclone = OverwritingRclone(
        str(remote.config), remote=remote, name=f"{victim['id']}.jpg", data=bytes(rotten)
    )
    result, recorded = upload(remote, store, deployment, rclone=rclone)
    assert rclone.media_looks == 1
    assert result.copied == 5 and victim["id"] not in recorded and len(recorded) == 5
    hash_type = {"s3": "md5", "local": "sha256", "webdav": "sha256"}[remote.kind]
    assert result.errors == [
        f"media/{victim['id']}.jpg: the remote's {hash_type} of it differs from the photo's"
    ]
    media_csv = remote.objects()["media.csv"].decode()
    assert victim["id"] not in media_csv  # not listed in the tables either
    # The next run finds the wrong bytes, sends the photo again and verifies it.
    again, recorded = upload(remote, store, deployment)
    assert (again.copied, again.skipped, again.errors, recorded) == (1, 0, [], [victim["id"]])
    check_package(remote, store, filled, tmp_path)


def test_a_full_remote_ends_the_run_as_full_and_only_what_is_there_is_recorded(
    usb_sticks, store, burst_dir, deployment, tmp_path, rclone_binary
):
    stick = usb_sticks("ext4", size_bytes=4 << 20)  # a NAS's disk with room for about 10 photos
    photos = sorted(burst_dir.glob("*.JPG"))
    start = datetime.datetime(2026, 6, 1, 21, 0, tzinfo=datetime.UTC)
    rows = [
        store.add(photos[i % len(photos)].read_bytes(), None, timestamp=_stamp(start, i), trigger="motion")
        for i in range(20)
    ]
    config = tmp_path / "rclone.conf"
    config.write_text("")
    remote = folder_remote("local", str(stick.mount_point / ROOT), stick.mount_point / ROOT, config)
    result, recorded = upload(remote, store, deployment, batch=4)
    assert result.kind == rc.FULL, result
    # "no space left on device", or rclone's own "file too big for remaining disk space"
    assert "space" in result.reason
    assert 0 < len(recorded) < len(rows)
    objects = remote.objects()
    by_id = {row["id"]: row for row in rows}
    for capture_id in recorded:  # what is recorded is there, whole, and listed
        assert objects[f"media/{capture_id}.jpg"] == card_bytes(store, by_id[capture_id])
        assert capture_id in objects["media.csv"].decode()
    for path, data in objects.items():  # nothing torn under a final name
        if path.startswith("media/"):
            capture_id = path.removeprefix("media/").removesuffix(".jpg")
            assert data == card_bytes(store, by_id[capture_id])


def _stamp(start: datetime.datetime, i: int):
    from hw.clock import ManualClock

    return ManualClock(start + datetime.timedelta(seconds=i)).now()


def test_a_server_paused_mid_upload_times_out_and_the_next_run_sends_only_what_did_not_arrive(
    s3_server, s3_bucket, store, burst_dir, deployment, tmp_path
):
    remote = s3_remote(s3_server, s3_bucket, tmp_path / "rclone.conf")
    photos = sorted(burst_dir.glob("*.JPG"))
    start = datetime.datetime(2026, 6, 1, 21, 0, tzinfo=datetime.UTC)
    rows = [
        store.add(photos[i % len(photos)].read_bytes(), None, timestamp=_stamp(start, i), trigger="motion")
        for i in range(16)
    ]
    media = f"/{s3_bucket}/{ROOT}/{FOLDER}/media/"
    paused = threading.Event()

    def pause_mid_batch():  # rclone sends 4 at a time: the link stalls as the next 4 start
        while not paused.is_set():
            if len(s3_server.requests("PUT", media)) >= 4:
                s3_server.pause()
                paused.set()
            time.sleep(0.01)

    watcher = threading.Thread(target=pause_mid_batch)
    watcher.start()
    began = time.monotonic()
    try:
        # 1 MiB/s: a batch of 8 photos of 290 kB takes 2 s, long enough for the watcher to see it.
        rclone = remote.rclone(io_timeout_s=2, bwlimit="1M")
        result, recorded = upload(remote, store, deployment, rclone=rclone, batch=8)
        took = time.monotonic() - began
    finally:
        paused.set()
        watcher.join()
        s3_server.resume()
    assert result.kind == rc.TIMEOUT, result
    assert took < 30
    assert recorded == []  # nothing is recorded before the tables list it
    # What reached the server whole: the first 4, and whatever of those in flight the server
    # took in before it stopped.
    time.sleep(0.5)  # the resumed server finishes what it had received
    there = {path for path in remote.sha256s() if path.startswith("media/")}
    assert len(there) >= 4
    tried = {row["id"]: remote.puts(f"media/{row['id']}.jpg") for row in rows}
    again, recorded = upload(remote, store, deployment, batch=8)
    assert (again.kind, again.errors, again.skipped) == (None, [], len(there))
    assert sorted(recorded) == sorted(row["id"] for row in rows)
    resent = []
    for row in rows:
        name = f"media/{row['id']}.jpg"
        sent = remote.puts(name) - tried[row["id"]]
        assert sent == (0 if name in there else 1), name
        resent += [name] if sent and tried[row["id"]] else []
    assert len(resent) <= 4  # at most the 4 in flight when the link stalled are sent twice
    check_package(remote, store, rows, tmp_path)


def test_a_stop_ends_the_run_at_once_even_while_the_remote_does_not_answer(
    s3_server, s3_bucket, store, filled, deployment, tmp_path
):
    remote = s3_remote(s3_server, s3_bucket, tmp_path / "rclone.conf")
    stop, ended = threading.Event(), []
    s3_server.pause()  # the first look at the remote hangs
    run = threading.Thread(target=lambda: ended.append(upload(remote, store, deployment, stop=stop)))
    try:
        run.start()
        time.sleep(1)
        stop.set()
        run.join(3)
        assert not run.is_alive(), "the run did not stop within 3 s"
    finally:
        s3_server.resume()
        run.join(60)
    result, recorded = ended[0]
    assert (result.kind, result.reason, recorded) == (rc.STOPPED, "stopped", [])
