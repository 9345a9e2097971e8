"""systemd/install.sh run for real into a throw-away root (``--root DIR``): a real user in DIR's
account files, a real venv with the package really installed, the unit enabled by systemctl.

To stay fast and offline, the package is installed with ``--pip-args "--no-deps
--no-build-isolation"``: no download, and setuptools and wheel come from the OS (Debian's
python3-setuptools and python3-wheel, seen through ``--system-site-packages``).  That is why the
venv is made from /usr/bin/python3, the OS's Python (as on the Pi), and not from the Python
running the tests, which has no ``wheel``.  Without the dependencies the installed command cannot
run, so the config written is the fallback; one test makes the dependencies of this test run
visible to the venv to check the config that ``appliance config --print-defaults`` writes.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

import appliance

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "systemd" / "install.sh"
UNIT = REPO / "systemd" / "appliance.service"
SYSTEM_PYTHON = "/usr/bin/python3"
FAST_PIP_ARGS = "--no-deps --no-build-isolation"

VENV = Path("opt/appliance/venv")
UNIT_PATH = Path("etc/systemd/system/appliance.service")
WANTS_LINK = Path("etc/systemd/system/multi-user.target.wants/appliance.service")
CONFIG = Path("etc/appliance/appliance.toml")
USB_RULE = Path("etc/udev/rules.d/90-appliance-usb.rules")
USB_PATH = Path("media/appliance-usb")

# What the install would change on this machine without --root.
REAL_ACCOUNT_FILES = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"]
REAL_PATHS = ["/opt/appliance", "/etc/appliance", f"/{UNIT_PATH}", f"/{WANTS_LINK}", f"/{USB_RULE}",
              f"/{USB_PATH}", str(REPO / "build")]  # fmt: skip


@dataclass
class Run:
    root: Path
    tmpdir: Path
    result: subprocess.CompletedProcess

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr

    def assert_succeeded(self):
        assert self.result.returncode == 0, self.output


def run_install(*args: str, tmpdir: Path, user: int | None = None) -> subprocess.CompletedProcess:
    """install.sh with ``args``, its temporary files in ``tmpdir``, as root or as uid ``user``."""
    tmpdir.mkdir(exist_ok=True)
    prefix = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    return subprocess.run(
        [*prefix, "bash", str(INSTALL), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(tmpdir)},
        timeout=300,
    )


def install_into(base: Path) -> Run:
    """A fast install into ``base/root`` (which may hold files already)."""
    root = base / "root"
    root.mkdir(exist_ok=True)
    result = run_install(
        "--root", str(root), "--python", SYSTEM_PYTHON, "--pip-args", FAST_PIP_ARGS, tmpdir=base / "tmp"
    )
    return Run(root, base / "tmp", result)


def fingerprint(path: Path):
    """Content and modification time of a file, the target of a link, or None when absent."""
    if path.is_symlink():
        return ("link", os.readlink(path), path.lstat().st_mtime_ns)
    if path.is_file():
        return (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    if path.exists():
        return ("dir", path.stat().st_mtime_ns)
    return None


def real_machine_state() -> dict:
    entries = [("passwd", "appliance"), ("group", "appliance"), ("group", "video"), ("group", "gpio")]
    state = {
        f"getent {database} {name}": subprocess.run(
            ["getent", database, name], capture_output=True, text=True
        ).stdout
        for database, name in entries
    }
    state |= {path: fingerprint(Path(path)) for path in REAL_ACCOUNT_FILES + REAL_PATHS}
    return state


def group_members(root: Path, group: str) -> list[str] | None:
    for line in (root / "etc/group").read_text().splitlines():
        name, _, _, members = line.split(":")
        if name == group:
            return members.split(",") if members else []
    return None


@pytest.fixture(scope="module")
def system_python():
    """Skips (fails under CI) when /usr/bin/python3 cannot make a venv that builds the package
    offline: it needs Python >= 3.11 and Debian's python3-venv, python3-setuptools, python3-wheel."""
    probe = "import sys, ensurepip, setuptools, wheel; assert sys.version_info >= (3, 11)"
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True)
    except FileNotFoundError:
        reason = f"{SYSTEM_PYTHON} not found"
    else:
        if result.returncode == 0:
            return SYSTEM_PYTHON
        reason = f"{SYSTEM_PYTHON} cannot build offline: {result.stderr.strip().splitlines()[-1]}"
    reason += " (apt install python3 python3-venv python3-setuptools python3-wheel)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def machine_before():
    return real_machine_state()


@pytest.fixture(scope="module")
def first_run(system_python, machine_before, tmp_path_factory) -> Run:
    run = install_into(tmp_path_factory.mktemp("first"))
    run.assert_succeeded()
    return run


@pytest.fixture(scope="module")
def second_run(first_run) -> tuple[Run, dict, dict]:
    """The same install again, with fingerprints of the root's files before and after it."""
    files = ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow", UNIT_PATH, WANTS_LINK, CONFIG]
    before = {str(path): fingerprint(first_run.root / path) for path in files}
    run = install_into(first_run.root.parent)
    after = {str(path): fingerprint(first_run.root / path) for path in files}
    return run, before, after


def test_creates_the_system_user_in_the_video_and_gpio_groups(first_run):
    passwd = (first_run.root / "etc/passwd").read_text().splitlines()
    [entry] = [line.split(":") for line in passwd if line.startswith("appliance:")]
    assert entry[5:] == ["/nonexistent", "/usr/sbin/nologin"]
    assert int(entry[2]) < 1000  # a system user
    assert group_members(first_run.root, "appliance") == []
    assert group_members(first_run.root, "video") == ["appliance"]
    assert group_members(first_run.root, "gpio") == ["appliance"]
    assert "creating user appliance" in first_run.output


def test_creates_a_venv_that_sees_the_system_packages_with_the_package_installed(first_run):
    venv = first_run.root / VENV
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert (venv / "bin" / "appliance").is_file()
    # -I: the package from the venv, not from the checkout.
    probe = "import appliance, hw, boot; print(appliance.__version__, appliance.__file__)"
    where = subprocess.run(
        [venv / "bin" / "python", "-I", "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert where[0] == appliance.__version__
    assert Path(where[1]).is_relative_to(venv)
    assert f"creating venv {venv}" in first_run.output


def test_installs_the_unit_unchanged_and_enables_it(first_run):
    assert (first_run.root / UNIT_PATH).read_bytes() == UNIT.read_bytes()
    assert os.readlink(first_run.root / WANTS_LINK) == f"/{UNIT_PATH}"


def test_installs_a_udev_rule_that_mounts_a_labelled_stick_for_the_appliance_user(first_run):
    rule = (first_run.root / USB_RULE).read_text()
    passwd = (first_run.root / "etc/passwd").read_text().splitlines()
    uid, gid = next(line.split(":")[2:4] for line in passwd if line.startswith("appliance:"))
    lines = [line for line in rule.splitlines() if not line.startswith("#")]
    by_type = {fstype: next(line for line in lines if f'ENV{{ID_FS_TYPE}}=="{fstype}"' in line)
               for fstype in ("vfat", "exfat", "ext4")}  # fmt: skip
    assert len(lines) == 3
    for fstype, line in by_type.items():
        assert line.startswith('ACTION=="add", SUBSYSTEM=="block", ENV{ID_FS_LABEL}=="TRAPDATA", ')
        command = line.split('RUN{program}+="')[1].rstrip('"').split()
        assert command[0] == "/usr/bin/systemd-mount" and "--no-block" in command
        assert command[-2:] == ["$devnode", "/media/appliance-usb"]
        options = dict(o.partition("=")[::2] for o in command[-3].removeprefix("--options=").split(","))
        assert "nofail" in options and "noatime" in options
        if fstype != "ext4":  # FAT and exFAT have no owners: the mount gives them to the appliance
            assert (options["uid"], options["gid"], options["umask"]) == (uid, gid, "0077")
    assert "flush" in by_type["vfat"]
    assert (first_run.root / USB_PATH).is_dir()


def test_the_udev_rule_asks_systemd_mount_for_what_it_accepts(first_run):
    # systemd-mount parses its command line before it needs a device: --help after the same
    # options proves each is one it knows (an unknown option fails with exit status 1).
    line = (first_run.root / USB_RULE).read_text().splitlines()[1]
    command = line.split('RUN{program}+="')[1].rstrip('"').split()
    result = subprocess.run([*command[:-2], "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_writes_a_config_when_there_is_none(first_run):
    config = (first_run.root / CONFIG).read_text()
    # Without dependencies (--no-deps) the installed command cannot print the defaults.
    assert "print-defaults did not work" in first_run.output
    assert all(line.startswith("#") for line in config.splitlines())
    assert "docs/configuration.md" in config and (REPO / "docs" / "configuration.md").is_file()


def test_says_how_to_see_the_logs(first_run):
    assert "journalctl -u appliance" in first_run.result.stdout


def test_leaves_no_temporary_files(first_run):
    assert not list(first_run.tmpdir.iterdir())


def test_a_second_run_changes_nothing_and_says_so(second_run):
    run, before, after = second_run
    run.assert_succeeded()
    assert after == before
    assert "creat" not in run.output
    for said in [
        "user appliance: already there",
        "user appliance in group gpio: already",
        f"venv {run.root / VENV}: already there",
        "already installed, unchanged",
        "already up to date",
        "already there, left as it is",
        "already enabled",
    ]:
        assert said in run.output


def test_nothing_changes_on_the_real_machine(second_run, machine_before):
    assert real_machine_state() == machine_before


def test_an_existing_config_is_never_overwritten(system_python, tmp_path):
    config = tmp_path / "root" / CONFIG
    config.parent.mkdir(parents=True)
    config.write_text("web_port = 9090\n")
    run = install_into(tmp_path)
    run.assert_succeeded()
    assert config.read_text() == "web_port = 9090\n"
    assert "left as it is" in run.output


def test_the_config_holds_the_defaults_printed_by_the_installed_command(system_python, tmp_path):
    printed = subprocess.run(
        [sys.executable, "-m", "appliance", "config", "--print-defaults"], capture_output=True, text=True
    )
    if printed.returncode != 0 or not printed.stdout:
        pytest.skip("appliance config --print-defaults does not exist yet")
    # A venv made beforehand, which also sees the dependencies installed for this test run
    # (paths in a .pth file), so that the installed command can run after a --no-deps install.
    venv = tmp_path / "root" / VENV
    subprocess.run([system_python, "-m", "venv", "--system-site-packages", venv], check=True)
    [site_packages] = (venv / "lib").glob("python3*/site-packages")
    (site_packages / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run = install_into(tmp_path)
    run.assert_succeeded()
    assert f"venv {venv}: already there" in run.output
    assert (tmp_path / "root" / CONFIG).read_text() == printed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frobnicate"], "unknown option: --frobnicate"),
        (["--root"], "--root needs a value"),
        (["--root", "/nonexistent/root"], "/nonexistent/root is not an existing directory"),
        (["--root", "/"], "leave --root out"),
    ],
)
def test_a_bad_command_line_exits_2_with_a_message(tmp_path, args, message):
    result = run_install(*args, tmpdir=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "--help" in result.stderr


def test_help_lists_the_options(tmp_path):
    result = run_install("-h", tmpdir=tmp_path)
    assert result.returncode == 0
    for option in ["--root DIR", "--python PATH", "--pip-args ARGS"]:
        assert option in result.stdout


def test_without_root_it_refuses_and_changes_nothing(tmp_path):
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("setpriv (util-linux) is needed to drop root")
        result = run_install(tmpdir=tmp_path, user=65534)  # nobody
    else:
        result = run_install(tmpdir=tmp_path)
    assert result.returncode == 1
    assert "must be run as root" in result.stderr
    assert result.stdout == ""
