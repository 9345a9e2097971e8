"""appliance/rclone.py against the real rclone: a real S3 server (moto, tests/s3_server.py) on
127.0.0.1 and rclone's local backend, including a real full ext4 filesystem."""

import hashlib
import os
import subprocess
import threading
import time

import pytest
from s3_server import free_port

from appliance import rclone
from appliance.exc import RemoteTrouble
from appliance.rclone import Rclone

pytestmark = pytest.mark.usefixtures("rclone_binary")


def make_files(folder, sizes: dict[str, int]) -> dict[str, bytes]:
    """Files of random bytes under ``folder``: name -> size in bytes; returns name -> bytes."""
    made = {}
    for name, size in sizes.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        made[name] = path.read_bytes()
    return made


@pytest.fixture
def source(tmp_path):
    """A local folder with three photos-to-be: two in it, one in a subfolder."""
    folder = tmp_path / "source"
    folder.mkdir()
    return folder, make_files(folder, {"a.jpg": 120_000, "b.jpg": 5, "media/c.jpg": 70_000})


@pytest.fixture
def config(s3_server, tmp_path):
    """An rclone config file whose remote "fleet" is the S3 server, with its valid key."""
    return s3_server.rclone_config(tmp_path / "rclone.conf")


def trouble(call, *args, **kwargs) -> RemoteTrouble:
    """The RemoteTrouble that ``call(*args, **kwargs)`` raises."""
    with pytest.raises(RemoteTrouble) as caught:
        call(*args, **kwargs)
    return caught.value


# --- What a remote can do, copies and their hashes ----------------------------------------------


def test_features_of_s3_give_md5_and_a_bucket_store(config):
    features = Rclone(str(config)).features("fleet:")
    assert features.hashes == ("md5",)
    assert features.bucket_based and not features.move


def test_features_of_a_local_folder_give_sha256_and_move(tmp_path):
    features = Rclone().features(str(tmp_path))
    assert "sha256" in features.hashes and "md5" in features.hashes
    assert features.move and not features.bucket_based


def test_copy_sends_each_file_once_and_the_remote_md5_is_the_local_one(s3_server, s3_bucket, config, source):
    folder, files = source
    remote = Rclone(str(config))
    remote.copy(folder, f"fleet:{s3_bucket}/dep", files, timeout_s=60)
    assert remote.hashes(f"fleet:{s3_bucket}/dep", "md5", files, timeout_s=60) == {
        name: hashlib.md5(data).hexdigest() for name, data in files.items()
    }
    puts = s3_server.requests("PUT", f"/{s3_bucket}/dep/")
    assert sorted(r.path for r in puts if r.status == 200) == sorted(f"/{s3_bucket}/dep/{n}" for n in files)
    assert len(puts) == len(files)
    assert remote.cat(f"fleet:{s3_bucket}/dep/media/c.jpg", timeout_s=60) == files["media/c.jpg"]


def test_hashes_with_download_read_every_file_back(s3_server, s3_bucket, config, source):
    folder, files = source
    remote = Rclone(str(config))
    remote.copy(folder, f"fleet:{s3_bucket}/dep", files, timeout_s=60)
    reported = remote.hashes(f"fleet:{s3_bucket}/dep", "md5", files, timeout_s=60)
    assert s3_server.requests("GET", f"/{s3_bucket}/dep/") == []  # from the listing, no object read
    read_back = remote.hashes(f"fleet:{s3_bucket}/dep", "md5", files, download=True, timeout_s=60)
    assert read_back == reported == {name: hashlib.md5(data).hexdigest() for name, data in files.items()}
    gets = s3_server.requests("GET", f"/{s3_bucket}/dep/")
    assert sorted(r.path for r in gets) == sorted(f"/{s3_bucket}/dep/{n}" for n in files)


def test_hashes_by_listing_ask_one_listing_and_no_object(s3_server, s3_bucket, config, source):
    folder, files = source
    remote = Rclone(str(config))
    remote.copy(folder, f"fleet:{s3_bucket}/dep", files, timeout_s=60)
    before = len(s3_server.requests())
    top = ["a.jpg", "b.jpg", "absent.jpg"]
    listed = remote.hashes(f"fleet:{s3_bucket}/dep", "md5", top, listing=True, timeout_s=60)
    assert listed == {name: hashlib.md5(files[name]).hexdigest() for name in ("a.jpg", "b.jpg")}
    asked = s3_server.requests()[before:]
    # One listing (and rclone's look whether "dep" is a file), no request for any object in it.
    assert [r.method for r in asked if r.method == "GET"] == ["GET"]
    assert not [r for r in asked if r.path.startswith(f"/{s3_bucket}/dep/")], asked


def test_hashes_leave_out_what_the_remote_lacks(s3_bucket, config, source):
    folder, files = source
    remote = Rclone(str(config))
    remote.copy(folder, f"fleet:{s3_bucket}/dep", ["a.jpg"], timeout_s=60)
    found = remote.hashes(f"fleet:{s3_bucket}/dep", "md5", ["a.jpg", "b.jpg", "never.jpg"], timeout_s=60)
    assert found == {"a.jpg": hashlib.md5(files["a.jpg"]).hexdigest()}
    assert remote.hashes(f"fleet:{s3_bucket}/not-yet", "md5", ["a.jpg"], timeout_s=60) == {}


def test_local_sha256_is_the_one_computed_here(tmp_path, source):
    folder, files = source
    target = tmp_path / "target"
    remote = Rclone()
    remote.copy(folder, str(target), files, timeout_s=60)
    assert remote.hashes(str(target), "sha256", files, timeout_s=60) == {
        name: hashlib.sha256(data).hexdigest() for name, data in files.items()
    }


def test_copy_checking_the_destination_resends_only_what_is_missing(s3_server, s3_bucket, config, source):
    folder, files = source
    remote, destination = Rclone(str(config)), f"fleet:{s3_bucket}/dep"
    remote.copy(folder, destination, ["a.jpg", "b.jpg"], timeout_s=60)
    remote.copy(folder, destination, files, check_destination=True, timeout_s=60)
    sent = [r.path for r in s3_server.requests("PUT", f"/{s3_bucket}/dep/")]
    assert sorted(sent) == sorted(f"/{s3_bucket}/dep/{n}" for n in ("a.jpg", "b.jpg", "media/c.jpg"))
    # Without the check, everything named goes again, with no request about it beforehand (rclone
    # reads each object's metadata after its upload).
    before = len(s3_server.requests(prefix=f"/{s3_bucket}/dep/"))
    remote.copy(folder, destination, files, timeout_s=60)
    third = s3_server.requests(prefix=f"/{s3_bucket}/dep/")[before:]
    first = {r.path: r.method for r in reversed(third)}
    assert first == {f"/{s3_bucket}/dep/{n}": "PUT" for n in files}


def test_move_takes_files_from_one_folder_to_another_of_the_remote(s3_bucket, config, source):
    folder, files = source
    remote = Rclone(str(config))
    remote.copy(folder, f"fleet:{s3_bucket}/incoming", files, timeout_s=60)
    remote.move(
        f"fleet:{s3_bucket}/incoming", f"fleet:{s3_bucket}/dep", ["a.jpg", "media/c.jpg"], timeout_s=60
    )
    assert set(remote.hashes(f"fleet:{s3_bucket}/dep", "md5", files, timeout_s=60)) == {
        "a.jpg",
        "media/c.jpg",
    }
    assert set(remote.hashes(f"fleet:{s3_bucket}/incoming", "md5", files, timeout_s=60)) == {"b.jpg"}


def test_cat_gives_the_bytes_or_none_for_a_missing_file(s3_bucket, config, source):
    folder, files = source
    remote = Rclone(str(config))
    remote.copy(folder, f"fleet:{s3_bucket}/dep", ["a.jpg"], timeout_s=60)
    assert remote.cat(f"fleet:{s3_bucket}/dep/a.jpg", timeout_s=60) == files["a.jpg"]
    assert remote.cat(f"fleet:{s3_bucket}/dep/missing.json", timeout_s=60) is None
    assert remote.cat(f"fleet:{s3_bucket}/nowhere/missing.json", timeout_s=60) is None
    assert remote.cat(str(folder / "missing.json"), timeout_s=60) is None


# --- Each failure, its kind and its message -----------------------------------------------------


def test_a_closed_port_is_unreachable(s3_server, tmp_path, source):
    folder, files = source
    config = s3_server.rclone_config(tmp_path / "closed.conf", endpoint=f"http://127.0.0.1:{free_port()}")
    remote = Rclone(str(config), connect_timeout_s=2)
    for call in (
        lambda: remote.copy(folder, "fleet:bucket/dep", files, timeout_s=60),
        lambda: remote.hashes("fleet:bucket/dep", "md5", files, timeout_s=60),
        lambda: remote.cat("fleet:bucket/dep/a.jpg", timeout_s=60),
    ):
        caught = trouble(call)
        assert caught.kind == rclone.UNREACHABLE
        assert "connection refused" in str(caught), str(caught)  # the reason, not only "send request failed"
        assert "\n" not in str(caught)


def test_a_stopped_server_is_unreachable_and_used_again_once_back(s3_server, config, source):
    folder, files = source
    remote = Rclone(str(config), connect_timeout_s=2)
    s3_server.stop()
    assert (
        trouble(lambda: remote.copy(folder, "fleet:back/dep", files, timeout_s=60)).kind == rclone.UNREACHABLE
    )
    s3_server.start()  # empty, same port and key
    s3_server.make_bucket("back")
    remote.copy(folder, "fleet:back/dep", files, timeout_s=60)
    assert len(remote.hashes("fleet:back/dep", "md5", files, timeout_s=60)) == len(files)


@pytest.mark.parametrize(
    ("wrong", "said"),
    [({"secret": "not-the-secret-at-all"}, "SignatureDoesNotMatch"),
     ({"access_key": "AKIANOTAKEYOFTHISONE"}, "InvalidAccessKeyId")],
    ids=["wrong secret", "unknown key"],
)  # fmt: skip
def test_wrong_credentials_are_refused(s3_server, s3_bucket, tmp_path, source, wrong, said):
    folder, files = source
    remote = Rclone(str(s3_server.rclone_config(tmp_path / "wrong.conf", **wrong)))
    for call in (
        lambda: remote.copy(folder, f"fleet:{s3_bucket}/dep", files, timeout_s=60),
        lambda: remote.cat(f"fleet:{s3_bucket}/dep/a.jpg", timeout_s=60),
    ):
        caught = trouble(call)
        assert caught.kind == rclone.CREDENTIALS
        assert said in str(caught)
    assert {r.status for r in s3_server.requests(prefix=f"/{s3_bucket}/")} == {403}


def test_a_missing_bucket_is_reported_and_never_made(s3_server, config, source):
    folder, files = source
    caught = trouble(
        lambda: Rclone(str(config)).copy(folder, "fleet:no-such-bucket/dep", files, timeout_s=60)
    )
    assert caught.kind == rclone.NO_BUCKET
    assert "NoSuchBucket" in str(caught)
    assert [r for r in s3_server.requests("PUT") if r.path.rstrip("/") == "/no-such-bucket"] == []


def test_a_link_stalled_mid_copy_times_out_by_rclone_s_own_timeout(s3_server, s3_bucket, config, tmp_path):
    """The server stops answering 0.5 s into a 1.5 s upload: rclone gives up by its own I/O
    timeout, well before the run's limit (rclone 1.60 drops a request left unanswered for
    about 3 × io_timeout_s, measured here, and tries twice: about 3.5 s in all)."""
    make_files(tmp_path, {"big.jpg": 1_500_000})
    remote = Rclone(str(config), bwlimit="1M", io_timeout_s=0.5, connect_timeout_s=1)
    threading.Timer(0.5, s3_server.pause).start()
    started = time.monotonic()
    caught = trouble(lambda: remote.copy(tmp_path, f"fleet:{s3_bucket}/dep", ["big.jpg"], timeout_s=60))
    took = time.monotonic() - started
    assert caught.kind == rclone.TIMEOUT, str(caught)
    assert "timeout" in str(caught) and "took longer than" not in str(caught), str(caught)
    assert took < 30, took
    assert s3_server.requests("PUT", f"/{s3_bucket}/dep/") == []  # nothing answered while paused


def test_a_batch_to_a_stalled_link_ends_at_its_first_file_given_up(s3_server, s3_bucket, config, tmp_path):
    """Twenty files to a server that stops answering: rclone would wait out its timeouts and
    retries for each file in turn (about 70 s here); the call ends at the first file it gives up,
    as "timed out", with the rest left for the next run."""
    names = list(make_files(tmp_path, {f"p{n:02}.jpg": 200_000 for n in range(20)}))
    remote = Rclone(str(config), io_timeout_s=1, connect_timeout_s=1)
    s3_server.pause()
    started = time.monotonic()
    caught = trouble(lambda: remote.copy(tmp_path, f"fleet:{s3_bucket}/dep", names, timeout_s=600))
    took = time.monotonic() - started
    assert caught.kind == rclone.TIMEOUT and "took longer than" not in str(caught), str(caught)
    assert took < 30, took


def test_a_run_longer_than_its_limit_is_ended_and_timed_out(s3_server, s3_bucket, config, source):
    folder, files = source
    s3_server.pause()
    started = time.monotonic()
    caught = trouble(lambda: Rclone(str(config)).copy(folder, f"fleet:{s3_bucket}/dep", files, timeout_s=1))
    assert caught.kind == rclone.TIMEOUT
    assert str(caught) == "rclone copy took longer than 1 s"
    assert time.monotonic() - started < 3


def test_a_stop_request_ends_a_run_at_once(s3_server, s3_bucket, config, source):
    folder, files = source
    s3_server.pause()
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    caught = trouble(
        lambda: Rclone(str(config)).copy(folder, f"fleet:{s3_bucket}/dep", files, timeout_s=60, stop=stop)
    )
    assert (caught.kind, str(caught)) == (rclone.STOPPED, "stopped")
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("sizes", [{"huge.jpg": 6_000_000}, {f"p{i}.jpg": 700_000 for i in range(6)}],
                         ids=["one file too big", "files that fill it"])  # fmt: skip
def test_a_full_local_target_is_full(usb_sticks, tmp_path, sizes):
    stick = usb_sticks("ext4", size_bytes=4 << 20)  # about 2.5 MB free
    make_files(tmp_path / "source", sizes)
    caught = trouble(
        lambda: Rclone().copy(tmp_path / "source", str(stick.mount_point / "dep"), sizes, timeout_s=60)
    )
    assert caught.kind == rclone.FULL, str(caught)
    assert "disk space" in str(caught)


def test_an_unknown_remote_is_not_configured(config, source):
    folder, files = source
    remote = Rclone(str(config))
    for call in (
        lambda: remote.copy(folder, "elsewhere:bucket/dep", files, timeout_s=60),
        lambda: remote.cat("elsewhere:bucket/dep/a.jpg", timeout_s=60),
    ):
        caught = trouble(call)
        assert caught.kind == rclone.NOT_CONFIGURED
        assert '"elsewhere:bucket/dep' in str(caught) and "didn't find section in config file" in str(caught)
    # rclone's words for this one name no remote.
    caught = trouble(remote.features, "elsewhere:")
    assert (caught.kind, str(caught)) == (
        rclone.NOT_CONFIGURED,
        "rclone backend failed (exit status 1): Failed to backend: didn't find section in config file",
    )


def test_without_rclone_it_says_to_install_it(config, source):
    folder, files = source
    remote = Rclone(str(config), binary="/nonexistent/rclone")
    caught = trouble(lambda: remote.copy(folder, "fleet:bucket/dep", files, timeout_s=60))
    assert caught.kind == rclone.NOT_INSTALLED
    assert str(caught) == "/nonexistent/rclone is not installed: apt install rclone"


def test_an_rclone_that_cannot_be_run_is_said_not_raised(config, source, tmp_path):
    folder, files = source
    binary = tmp_path / "rclone"
    binary.write_text("not a program")  # not executable
    caught = trouble(
        lambda: Rclone(str(config), binary=str(binary)).copy(folder, "fleet:b/d", files, timeout_s=60)
    )
    assert (
        caught.kind == rclone.NOT_INSTALLED and str(caught) == f"{binary} cannot be run (Permission denied)"
    )


# --- Bandwidth ----------------------------------------------------------------------------------


def test_bwlimit_holds_an_upload_to_its_rate(s3_bucket, config, tmp_path):
    size = 1_500_000
    make_files(tmp_path, {"big.jpg": size})
    remote = Rclone(str(config), bwlimit="200k")  # rclone's k: KiB/s
    started = time.monotonic()
    remote.copy(tmp_path, f"fleet:{s3_bucket}/dep", ["big.jpg"], timeout_s=60)
    rate = size / (time.monotonic() - started)
    print(f"bwlimit 200k: {size} bytes at {rate / 1024:.0f} KiB/s")
    assert rate < 1.1 * 200 * 1024
    assert len(remote.hashes(f"fleet:{s3_bucket}/dep", "md5", ["big.jpg"], timeout_s=60)) == 1


# --- Credentials never in a message ---------------------------------------------------------------


def raw_stderr(config, *args) -> str:
    """What rclone itself prints for ``args`` with ``config`` (no filter)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    said = subprocess.run(["rclone", "--config", str(config), "--retries", "1", "--low-level-retries", "1",
                           *args], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    return said.stderr


def pieces(secret: str, n: int = 8) -> set[str]:
    return {secret[i : i + n] for i in range(len(secret) - n + 1)}


def test_the_credentials_rclone_prints_never_reach_a_message(s3_server, tmp_path, source):
    folder, files = source
    key, secret = s3_server.credentials.access_key_id, s3_server.credentials.secret_access_key
    # An endpoint mistyped with the key pair in it: rclone echoes it in every error.
    endpoint = f"http://127.0.0.1:{free_port()}/{key}/{secret}"
    config = s3_server.rclone_config(tmp_path / "leaky.conf", endpoint=endpoint)
    assert key in raw_stderr(config, "cat", "fleet:bucket/a.jpg")
    assert secret in raw_stderr(config, "cat", "fleet:bucket/a.jpg")
    remote = Rclone(str(config), connect_timeout_s=2)
    for call in (
        lambda: remote.copy(folder, "fleet:bucket/dep", files, timeout_s=60),
        lambda: remote.hashes("fleet:bucket/dep", "md5", files, timeout_s=60),
        lambda: remote.cat("fleet:bucket/dep/a.jpg", timeout_s=60),
    ):
        message = str(trouble(call))
        assert "***" in message, message
        assert not any(p in message for p in pieces(key) | pieces(secret)), message


def fake_rclone(tmp_path, line: str):
    """A stand-in for rclone that prints ``line`` as an error and fails (exit status 1)."""
    script = tmp_path / "fake-rclone"
    script.write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n2026/12/03 16:57:00 ERROR : {line}\nEOF\nexit 1\n")
    script.chmod(0o755)
    return str(script)


def test_a_secret_cut_by_the_line_limit_is_still_hidden(s3_server, tmp_path):
    secret = s3_server.credentials.secret_access_key
    config = s3_server.rclone_config(tmp_path / "rclone.conf")
    for at in range(rclone.LINE_MAX_CHARS - 60, rclone.LINE_MAX_CHARS + 5):
        remote = Rclone(str(config), binary=fake_rclone(tmp_path, "x" * at + secret + " is what it said"))
        message = str(trouble(remote.run, ["copy"], timeout_s=10))
        assert not any(p in message for p in pieces(secret)), (at, message)


def test_a_rewritten_config_s_new_secret_is_hidden_too(s3_server, tmp_path):
    config = s3_server.rclone_config(tmp_path / "rclone.conf")
    remote = Rclone(str(config), binary=fake_rclone(tmp_path, "nothing secret"))
    assert trouble(remote.run, ["copy"], timeout_s=10).kind == rclone.FAILED
    # The key pair replaced while the appliance runs (rclone reads the file at each run).
    s3_server.rclone_config(
        config, access_key="AKIAROTATEDKEY000001", secret="rotated-secret-rotated-secret-40-chars!"
    )
    remote.binary = fake_rclone(
        tmp_path, "signed with rotated-secret-rotated-secret-40-chars! by AKIAROTATEDKEY000001"
    )
    message = str(trouble(remote.run, ["copy"], timeout_s=10))
    assert "rotated-secret" not in message and "AKIAROTATEDKEY" not in message, message


def test_settings_that_are_not_secrets_stay_in_messages(tmp_path):
    config = tmp_path / "rclone.conf"
    config.write_text(
        "[fleet]\ntype = s3\nenv_auth = false\nv2_auth = false\nsecret_access_key = s3cr3t-value\n"
    )
    remote = Rclone(
        str(config), binary=fake_rclone(tmp_path, "use_accelerate_endpoint is false; s3cr3t-value")
    )
    message = str(trouble(remote.run, ["copy"], timeout_s=10))
    assert "is false; ***" in message, message
