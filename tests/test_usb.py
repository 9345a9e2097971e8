"""hw.usb: which mounted filesystem is the stick, on real FAT32, exFAT and ext4 images."""

import os

from hw.usb import UsbStick, find_stick, why_not


def test_a_labelled_stick_is_found_with_its_filesystem_and_room(usb_sticks, stick_fstype, tmp_path):
    stick = usb_sticks(stick_fstype, size_bytes=40 << 20, mount_point=tmp_path / "usb")
    found = find_stick(tmp_path / "usb", "TRAPDATA", tmp_path)
    assert isinstance(found, UsbStick)
    assert (found.path, found.label, found.read_only) == (tmp_path / "usb", "TRAPDATA", False)
    assert found.dev == os.stat(stick.mount_point).st_dev != os.stat(tmp_path).st_dev
    assert found.uuid  # the target name of the stick is made from it
    if stick_fstype == "vfat":  # fusefat reports no room (statvfs gives 0 blocks)
        assert found.free_bytes == -1
    else:
        assert 20 << 20 < found.free_bytes < 40 << 20
    assert why_not(tmp_path / "usb", "trapdata", tmp_path) == ""  # FAT keeps labels in capitals


def test_a_stick_with_another_label_is_not_used(usb_sticks, tmp_path):
    usb_sticks("exfat", size_bytes=8 << 20, label="HOLIDAY", mount_point=tmp_path / "usb")
    assert find_stick(tmp_path / "usb", "TRAPDATA", tmp_path) is None
    assert "'HOLIDAY', not 'TRAPDATA'" in why_not(tmp_path / "usb", "TRAPDATA", tmp_path)


def test_nothing_mounted_or_a_plain_folder_is_no_stick(tmp_path):
    (tmp_path / "usb").mkdir()
    for path in (tmp_path / "usb", tmp_path / "missing"):
        assert find_stick(path, "TRAPDATA", tmp_path) is None
        assert why_not(path, "TRAPDATA", tmp_path) == f"nothing is mounted at {path}"


def test_the_data_directorys_own_filesystem_is_no_stick(usb_sticks, tmp_path):
    stick = usb_sticks("ext4", size_bytes=8 << 20, mount_point=tmp_path / "usb")
    data_dir = stick.mount_point / "data"
    data_dir.mkdir()
    assert find_stick(stick.mount_point, "TRAPDATA", data_dir) is None
    assert "data directory's own filesystem" in why_not(stick.mount_point, "TRAPDATA", data_dir)


def test_a_read_only_stick_is_found_and_says_so(usb_sticks, tmp_path):
    stick = usb_sticks("ext4", size_bytes=8 << 20, mount_point=tmp_path / "usb").remount_read_only()
    assert find_stick(stick.mount_point, "TRAPDATA", tmp_path).read_only
