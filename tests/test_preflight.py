import subprocess

from boot.preflight import FATAL, OK, check_data_dir, preflight


def test_a_writable_data_dir_passes_and_is_created(tmp_path):
    checks = preflight(tmp_path / "new" / "data")
    assert [(c.name, c.level) for c in checks] == [("webp", OK), ("data_dir", OK)]
    assert (tmp_path / "new" / "data").is_dir()
    assert not list((tmp_path / "new" / "data").iterdir())  # the probe is gone


def test_a_data_dir_under_a_file_is_fatal(tmp_path):
    (tmp_path / "file").write_text("")
    check = check_data_dir(tmp_path / "file" / "data")
    assert check.level == FATAL and "not writable" in check.reason


def test_a_read_only_filesystem_is_fatal(tiny_fs):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    check = check_data_dir(tiny_fs)
    assert check.level == FATAL and "Read-only file system" in check.reason
