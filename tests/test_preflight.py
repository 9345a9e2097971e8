import subprocess
import sys

from boot.preflight import (
    FATAL,
    OK,
    WARNING,
    check_camera,
    check_data_dir,
    check_free_space,
    check_mount,
    check_rclone,
    preflight,
)


def test_a_writable_data_dir_passes_and_is_created(tmp_path):
    checks = preflight(tmp_path / "new" / "data")
    assert [c.name for c in checks] == ["webp", "data_mount", "data_dir", "free_space", "clock", "camera"]
    assert {c.name: c.level for c in checks if c.name != "clock"} == dict.fromkeys(
        ["webp", "data_mount", "data_dir", "free_space", "camera"], OK
    )
    assert (tmp_path / "new" / "data").is_dir()
    assert not list((tmp_path / "new" / "data").iterdir())  # the probe is gone


def test_a_data_dir_under_a_file_is_fatal(tmp_path):
    (tmp_path / "file").write_text("")
    check = check_data_dir(tmp_path / "file" / "data")
    assert check.level == FATAL and "is a file, or inside one, not a folder" in check.reason


def test_a_read_only_filesystem_is_fatal(tiny_fs):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    check = check_data_dir(tiny_fs)
    assert check.level == FATAL and "Read-only file system" in check.reason


def test_a_missing_mount_is_fatal_and_nothing_is_written_to_the_wrong_card(tmp_path):
    usb = tmp_path / "usb"  # the USB disk's mount point, with nothing mounted on it
    usb.mkdir()
    checks = preflight(usb / "appliance", data_mount=str(usb))
    mount = next(c for c in checks if c.name == "data_mount")
    assert mount.level == FATAL and f"{usb} is not mounted" in mount.reason
    assert "data_dir" not in [c.name for c in checks]
    assert not (usb / "appliance").exists()


def test_a_data_dir_on_the_configured_mount_passes_and_one_elsewhere_is_fatal(tiny_fs, tmp_path):
    assert check_mount(tiny_fs / "appliance", str(tiny_fs)).level == OK
    elsewhere = check_mount(tmp_path / "data", str(tiny_fs))
    assert elsewhere.level == FATAL and f"not on the data_mount {tiny_fs}" in elsewhere.reason
    assert "is on the filesystem mounted at" in check_mount(tiny_fs / "appliance", "").reason


def test_free_space_below_the_floor_warns(tiny_fs):
    assert check_free_space(tiny_fs, 1 << 20).level == OK  # 2 MiB free
    low = check_free_space(tiny_fs, 64 << 20)
    assert low.level == WARNING and "capturing pauses" in low.reason


def test_camera_check_without_picamera2_is_fatal_and_simulation_needs_none():
    assert check_camera(simulate=True).level == OK
    if "picamera2" not in sys.modules:
        missing = check_camera(simulate=False)
        assert missing.level == FATAL and "picamera2 is not installed" in missing.reason


def test_camera_check_lists_the_cameras_libcamera_sees(fake_picamera2):
    check = check_camera(simulate=False)
    assert (check.level, check.reason) == (OK, "imx708 (camera 0)")
    fake_picamera2.Picamera2.attached = 0
    check = check_camera(simulate=False)
    assert check.level == FATAL and "no camera detected" in check.reason
    assert fake_picamera2.Picamera2.open_count == 0  # listed, never opened


def test_a_data_dir_reached_through_a_symlink_counts_where_it_points(tiny_fs, tmp_path):
    (tmp_path / "data").symlink_to(tiny_fs)
    assert check_mount(tmp_path / "data", str(tiny_fs)).level == OK


def rclone_config(tmp_path, mode: int, text: str = "[fleet]\ntype = s3\nsecret_access_key = s3cr3t\n"):
    path = tmp_path / "rclone.conf"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_an_rclone_config_the_group_or_anyone_may_read_is_a_warning_naming_the_fix(tmp_path):
    assert check_rclone("fleet:bucket/", rclone_config(tmp_path, 0o600)).level == OK
    for mode, who in ((0o640, "its group"), (0o644, "anyone")):
        check = check_rclone("fleet:bucket/", rclone_config(tmp_path, mode))
        assert check.level == WARNING
        assert (
            f"readable by {who}" in check.reason and f"chmod 600 {tmp_path / 'rclone.conf'}" in check.reason
        )
    missing = check_rclone("other:bucket/", rclone_config(tmp_path, 0o600))
    assert missing.level == WARNING and "has no remote [other]" in missing.reason
    gone = check_rclone("fleet:bucket/", tmp_path / "none.conf")
    assert gone.level == WARNING and "set offload_rclone_config" in gone.reason
    assert check_rclone("/mnt/nas/traps", tmp_path / "none.conf").level == OK  # a folder needs no config


def test_a_remote_without_rclone_installed_is_a_warning_saying_how_to_install_it(tmp_path):
    check = check_rclone("fleet:bucket/", rclone_config(tmp_path, 0o600), binary="no-such-rclone")
    assert check.level == WARNING and "apt install rclone" in check.reason
