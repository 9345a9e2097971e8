"""The systemd unit (systemd/appliance.service): systemd's own checks, the settings the appliance
relies on, and a README entry for every setting.

``systemd-analyze`` runs offline on a throw-away root in ``tmp_path`` (the unit, stand-ins for the
programs it runs, a copy of the system's units); nothing outside it is written.  Without the tool
the first two tests skip, except under CI (``CI=true``), where they fail: ``.ci/run`` installs
Debian's ``systemd`` package.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[1] / "systemd"
UNIT = SYSTEMD_DIR / "appliance.service"
README = SYSTEMD_DIR / "README.md"

# The system's own units (targets, modprobe@.service), which `verify` needs to resolve the unit's
# dependencies; copied into the throw-away root.
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

# systemd-analyze security rates 0.0 (locked down) to 10.0; up to 4.0 is "OK".
MAX_EXPOSURE = 4.0

# The programs the unit runs, as `verify` looks for them in the root (Debian: /bin is /usr/bin).
PROGRAMS = ("opt/appliance/venv/bin/appliance", "usr/bin/kill")


@pytest.fixture
def systemd_analyze() -> str:
    """Path of ``systemd-analyze``; skips (fails under CI) where it is missing."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        message = "systemd-analyze not found: .ci/run must install Debian's systemd package"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return tool


@pytest.fixture
def root(tmp_path) -> Path:
    """A root directory holding the unit in etc/systemd/system, the system's units and a stand-in
    shell script for each program the unit runs."""
    for program in PROGRAMS:
        path = tmp_path / program
        path.parent.mkdir(parents=True)
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    (tmp_path / "bin").symlink_to("usr/bin")
    shutil.copytree(SYSTEM_UNITS, tmp_path / "usr/lib/systemd/system", symlinks=True)
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copy(UNIT, units / UNIT.name)
    return tmp_path


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)


def settings(text: str) -> list[tuple[str, str, str]]:
    """The unit's settings as ``(section, key, value)``, in file order; a key set on several lines
    appears once per line."""
    found, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in settings(UNIT.read_text()) if s == section and k == key]


def test_systemd_analyze_verify_prints_nothing(systemd_analyze, root):
    result = run(systemd_analyze, "verify", f"--root={root}", UNIT.name)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_security_exposure_is_at_most_ok(systemd_analyze, root):
    threshold = f"--threshold={round(MAX_EXPOSURE * 10)}"  # the tool counts in tenths
    result = run(systemd_analyze, "security", "--offline=true", f"--root={root}", threshold, UNIT.name)
    found = re.search(r"Overall exposure level for appliance\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    print(f"systemd-analyze security: exposure {exposure} of 10 (at most {MAX_EXPOSURE} allowed)")
    exposed = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert exposure <= MAX_EXPOSURE, "\n".join(exposed)
    assert result.returncode == 0, result.stderr


def test_unit_has_the_settings_the_appliance_relies_on():
    (exec_start,) = values("ExecStart")
    assert exec_start.split()[:2] == ["/opt/appliance/venv/bin/appliance", "run"]
    assert "--data-dir /var/lib/appliance" in exec_start
    assert "--config" not in exec_start  # the appliance finds /boot/firmware/appliance.toml itself
    assert values("Type") == ["notify"]
    assert values("NotifyAccess") == ["main"]
    (watchdog,) = values("WatchdogSec")
    assert int(watchdog) > 0  # the loop pings at half the period it reads from $WATCHDOG_USEC
    (reload,) = values("ExecReload")
    assert reload.split() == ["/bin/kill", "-HUP", "$MAINPID"]  # SIGHUP reloads the config
    assert values("KillSignal") == ["SIGTERM"]
    assert values("RestartPreventExitStatus") == ["2"]  # a bad config
    assert "/var/lib/appliance" in " ".join(values("RequiresMountsFor", "Unit")).split()
    assert values("StateDirectory") == ["appliance"]
    assert values("RuntimeDirectory") == ["appliance"]
    assert values("WorkingDirectory") == ["/run/appliance"]  # lgpio's pipes need a writable cwd


def test_sandbox_leaves_what_the_appliance_reads():
    # hw.clock.clock_synced(): glibc's adjtimex() is the clock_adjtime system call.  ProtectClock=
    # blocks it altogether, read-only or not, and every capture would be recorded unsynchronised.
    allowed = " ".join(v for v in values("SystemCallFilter") if not v.startswith("~")).split()
    assert {"adjtimex", "clock_adjtime", "clock_adjtime64"} <= set(allowed)
    assert values("ProtectClock") in ([], ["no"])
    # hw.clock.boot_id() reads /proc/sys/kernel/random/boot_id, which ProcSubset=pid hides.
    assert values("ProcSubset") in ([], ["all"])
    families = " ".join(values("RestrictAddressFamilies")).split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)  # sd_notify, the status page


def test_every_setting_is_explained_in_the_readme():
    readme = README.read_text()
    keys = {key for _, key, _ in settings(UNIT.read_text())}
    missing = sorted(key for key in keys if f"`{key}=" not in readme)
    assert not missing, f"settings in {UNIT.name} not explained in {README}: {missing}"
