#!/usr/bin/env bash
# Installs the camera-trap appliance as a system service, from the checkout this script lives in.
# Every step checks first and changes only what is missing or out of date, so running it again
# is safe: after `git pull`, it installs the new code and restarts the service if anything changed.
# Run with -h for the options.
set -euo pipefail

readonly PROG=install.sh
readonly USER_NAME=appliance
# The unit's SupplementaryGroups=: video for the camera, gpio for /dev/gpiochip*.
readonly EXTRA_GROUPS=(video gpio)
readonly DIST_NAME=camtrap-appliance
readonly VENV=/opt/appliance/venv
readonly UNIT_NAME=appliance.service
readonly UNIT_DIR=/etc/systemd/system
readonly CONFIG_DIR=/etc/appliance
readonly CONFIG=/etc/appliance/appliance.toml
readonly BOOT_CONFIG=/boot/firmware/appliance.toml
# The web_port default (docs/configuration.md).
readonly WEB_PORT=8080
# Where a USB stick labelled USB_LABEL is mounted (offload_usb_path, offload_usb_label).
readonly USB_PATH=/media/appliance-usb
readonly USB_LABEL=TRAPDATA
readonly USB_RULE=/etc/udev/rules.d/90-appliance-usb.rules

usage() {
  cat <<EOF
Usage: sudo bash systemd/install.sh [--root DIR] [--python PATH] [--pip-args ARGS]

Installs the appliance from this checkout ($SRC) and starts it:
  1. the system user and group '$USER_NAME' (no home, no login shell), in the groups ${EXTRA_GROUPS[*]}
     (each group is created if missing);
  2. the venv $VENV, made with --system-site-packages so that it sees the OS's
     python3-picamera2 and python3-lgpio;
  3. the package, installed into that venv with pip (again on every run, to pick up changes),
     and Debian's rclone (apt-get install rclone) for the remote offload when it is missing;
  4. the unit $UNIT_DIR/$UNIT_NAME, copied from systemd/ when it differs, and the udev rule
     $USB_RULE, which mounts a USB stick labelled $USB_LABEL (FAT32, exFAT or ext4) at
     $USB_PATH for the appliance's user (set offload_usb_path = "$USB_PATH" to use it);
  5. $CONFIG, written with every default (commented) when no config exists;
     an existing config is never changed;
  6. systemctl daemon-reload (when the unit changed), enable, and start (or restart, when the
     unit or the package changed and the service was running).
Each step says what it did, or that there was nothing to do.

Options:
  --root DIR       install into DIR instead of the running system, for tests: useradd --root DIR,
                   DIR$VENV, DIR$UNIT_DIR, systemctl --root=DIR enable; nothing is started and
                   nothing outside DIR is changed (temporary files go to \$TMPDIR and are removed).
                   DIR must exist; missing DIR/etc/passwd, group, shadow and gshadow are created
                   empty. The venv's scripts name DIR$VENV/bin/python, so DIR is not a
                   bootable image.
  --python PATH    the Python that makes the venv (default: /usr/bin/python3, the OS's Python,
                   whose packages the venv sees; 3.11 or newer).
  --pip-args ARGS  extra arguments for 'pip install', split on spaces. The tests use
                   "--no-deps --no-build-isolation" to stay offline and fast.
  -h, --help       show this help.

Needs root. Exit status: 0 when done, 1 when a step failed, 2 for a bad command line.
EOF
}

say() { printf '%s\n' "$*"; }
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}
usage_error() {
  printf '%s: %s (see %s --help)\n' "$PROG" "$*" "$PROG" >&2
  exit 2
}

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
ROOT=""
PYTHON=/usr/bin/python3
PIP_ARGS=()

while (($#)); do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --root | --python | --pip-args)
      (($# >= 2)) || usage_error "$1 needs a value"
      option=$1 value=$2
      shift 2
      ;;
    --root=* | --python=* | --pip-args=*)
      option=${1%%=*} value=${1#*=}
      shift
      ;;
    *) usage_error "unknown option: $1" ;;
  esac
  case "$option" in
    --root)
      [[ -d $value ]] || usage_error "--root: $value is not an existing directory"
      ROOT=$(cd "$value" && pwd -P)
      [[ $ROOT != / ]] || usage_error "--root /: leave --root out to install into the running system"
      ;;
    --python) PYTHON=$value ;;
    --pip-args) read -r -a PIP_ARGS <<<"$value" ;;
  esac
done

# Anything created here is read by the service user: a root umask of 077 would lock it out.
umask 022
# Python puts the working directory on sys.path: in the checkout, its *.egg-info would pass for
# the installed package.
[[ $PYTHON != */* || $PYTHON == /* ]] || PYTHON=$PWD/$PYTHON
cd /

((EUID == 0)) || die "must be run as root (try: sudo bash $0${ROOT:+ --root $ROOT})"
for tool in useradd groupadd usermod systemctl tar; do
  command -v "$tool" >/dev/null || die "$tool not found (it comes with the OS: passwd, systemd, tar)"
done
[[ -f $SRC/setup.cfg && -f $SRC/systemd/$UNIT_NAME ]] ||
  die "$SRC does not look like the appliance's checkout (no setup.cfg or systemd/$UNIT_NAME)"
if [[ -z $ROOT && ! -d /run/systemd/system ]]; then
  die "systemd is not running here (a container?); use --root DIR to install into a folder"
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
  die "$PYTHON is missing or older than Python 3.11 (choose one with --python)"

ROOT_OPT=()
[[ -z $ROOT ]] || ROOT_OPT=(--root "$ROOT")

# --- 1. user and groups -------------------------------------------------------------------------
# Read from the files rather than NSS (getent) so that --root DIR and the running system take the
# same path; useradd and groupadd --system write these files.

if [[ -n $ROOT ]]; then
  mkdir -p "$ROOT/etc"
  for file in passwd group shadow gshadow; do
    if [[ ! -e $ROOT/etc/$file ]]; then
      say "creating empty $ROOT/etc/$file (useradd --root needs it)"
      install -m "$([[ $file == *shadow ]] && echo 0640 || echo 0644)" /dev/null "$ROOT/etc/$file"
    fi
  done
fi

has_entry() { # FILE NAME: is there a line for NAME in FILE (passwd or group)?
  awk -F: -v name="$2" '$1 == name { found = 1 } END { exit !found }' "$ROOT/etc/$1"
}
in_group() { # GROUP USER
  awk -F: -v group="$1" -v user="$2" '
    $1 == group { n = split($4, members, ","); for (i = 1; i <= n; i++) if (members[i] == user) found = 1 }
    END { exit !found }' "$ROOT/etc/group"
}

for group in "${EXTRA_GROUPS[@]}"; do
  if has_entry group "$group"; then
    say "group $group: already there"
  else
    say "creating group $group"
    groupadd "${ROOT_OPT[@]}" --system "$group"
  fi
done

if has_entry passwd "$USER_NAME"; then
  say "user $USER_NAME: already there"
else
  say "creating user $USER_NAME (system user, no home, no login shell)"
  # A group of that name left over (by hand, or a removed user) becomes the user's group.
  if has_entry group "$USER_NAME"; then group_opt=(--gid "$USER_NAME"); else group_opt=(--user-group); fi
  useradd "${ROOT_OPT[@]}" --system "${group_opt[@]}" --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$USER_NAME"
fi

for group in "${EXTRA_GROUPS[@]}"; do
  if in_group "$group" "$USER_NAME"; then
    say "user $USER_NAME in group $group: already"
  else
    say "adding user $USER_NAME to group $group"
    usermod "${ROOT_OPT[@]}" --append --groups "$group" "$USER_NAME"
  fi
done

# --- 2. venv ------------------------------------------------------------------------------------

venv=$ROOT$VENV
if [[ -e $venv/pyvenv.cfg ]]; then
  grep -Eq '^include-system-site-packages *= *true' "$venv/pyvenv.cfg" ||
    die "$venv was made without --system-site-packages, so it cannot see the OS's picamera2; remove it and run again"
  "$venv/bin/python" -c '' 2>/dev/null ||
    die "$venv/bin/python does not run (was the OS's Python upgraded?); remove $venv and run again"
  say "venv $venv: already there"
elif [[ -e $venv ]]; then
  die "$venv exists but is not a venv (no pyvenv.cfg); move it away and run again"
else
  say "creating venv $venv (--system-site-packages, from $PYTHON)"
  mkdir -p "$(dirname "$venv")"
  if ! "$PYTHON" -m venv --system-site-packages "$venv"; then
    # A venv without pip would pass the check above on the next run.
    rm -rf "$venv"
    die "could not create the venv with $PYTHON (on Debian and Raspberry Pi OS: apt install python3-venv)"
  fi
fi

# --- 3. package ---------------------------------------------------------------------------------

# What pip installed for the package (version, and each file with its hash); empty when absent.
# The .dist-info folder is left out: it names the folder installed from, a new one each run.
package_fingerprint() {
  "$venv/bin/python" -I - "$DIST_NAME" <<'EOF' | sha256sum
import importlib.metadata as metadata
import sys

try:
    dist = metadata.distribution(sys.argv[1])
except metadata.PackageNotFoundError:
    sys.exit()
print(dist.version)
for file in sorted(dist.files or (), key=str):
    if file.hash and ".dist-info/" not in str(file):
        print(file, file.hash.value)
EOF
}

installed_version() { # empty when not installed
  "$venv/bin/python" -I -c '
import importlib.metadata as metadata, sys
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass
' "$DIST_NAME"
}

# pip builds in the source folder (build/, *.egg-info): build from a copy, so that the checkout
# gets no root-owned files and no stale build/ can put deleted modules into the package.
stage=$(mktemp -d "${TMPDIR:-/tmp}/appliance-install.XXXXXX")
trap 'rm -rf "$stage"' EXIT
tar -C "$SRC" --exclude-vcs --exclude=./.venv --exclude=./build --exclude=./dist \
  --exclude=./appliance-data --exclude=./.ci-cache --exclude=./.pytest_cache --exclude=./.ruff_cache \
  --exclude=./.hypothesis --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$stage" -xf - ||
  die "could not copy $SRC to $stage"

before=$(package_fingerprint) || die "could not read what is installed in $venv"
before_version=$(installed_version)
say "installing $DIST_NAME from $SRC into $venv (pip; with its dependencies this takes minutes on a Pi)"
"$venv/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
  "${PIP_ARGS[@]}" "$stage" || die "pip install failed (see above)"
after=$(package_fingerprint) || die "could not read what pip installed in $venv"
version=$(installed_version)
package_changed=false
if [[ $before == "$after" ]]; then
  say "package $DIST_NAME $version: already installed, unchanged"
else
  package_changed=true
  if [[ -n $before_version ]]; then
    say "package $DIST_NAME $version: updated (was $before_version)"
  else
    say "package $DIST_NAME $version: installed"
  fi
fi

# rclone, for the remote offload (offload_remote): Debian's package, as the docs say. Not having it
# stops nothing else, so a failed install (no network yet) is said, not fatal.
if command -v rclone >/dev/null; then
  say "rclone: already installed ($(rclone version 2>/dev/null | head -n 1))"
elif [[ -n $ROOT ]]; then
  say "rclone: not installed; with --root nothing is installed (on the trap: apt install rclone)"
elif DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rclone >/dev/null; then
  say "rclone: installed (apt-get install rclone), for offload_remote"
else
  say "rclone: could not be installed (no network?); the remote offload needs it: apt install rclone"
fi

# --- 4. unit ------------------------------------------------------------------------------------

unit=$ROOT$UNIT_DIR/$UNIT_NAME
unit_changed=false
if cmp -s "$SRC/systemd/$UNIT_NAME" "$unit"; then
  say "unit $unit: already up to date"
else
  unit_changed=true
  if [[ -e $unit ]]; then say "updating unit $unit (it differs from systemd/$UNIT_NAME)"; else say "installing unit $unit"; fi
  mkdir -p "$(dirname "$unit")"
  install -m 0644 "$SRC/systemd/$UNIT_NAME" "$unit.tmp"
  mv -f "$unit.tmp" "$unit"
fi

# The USB stick: Raspberry Pi OS Lite has no automounter.  udev asks systemd-mount for a mount
# bound to the device (--no-block: udev must not wait), so pulling the stick out stops the mount;
# FAT and exFAT take the owner from the options, with flush (FAT) so that each file reaches the
# stick when closed; ext4 keeps owners (see docs/operating.md); nofail everywhere, and no fsck.
usb_uid=$(awk -F: -v name="$USER_NAME" '$1 == name { print $3 }' "$ROOT/etc/passwd")
usb_gid=$(awk -F: -v name="$USER_NAME" '$1 == name { print $4 }' "$ROOT/etc/passwd")
[[ -n $usb_uid && -n $usb_gid ]] || die "user $USER_NAME has no entry in $ROOT/etc/passwd"
usb_mount() { # FSTYPE OPTIONS: the rule's line for a stick of that filesystem
  printf '%s\n' "ACTION==\"add\", SUBSYSTEM==\"block\", ENV{ID_FS_LABEL}==\"$USB_LABEL\", ENV{ID_FS_TYPE}==\"$1\", RUN{program}+=\"/usr/bin/systemd-mount --no-block --collect --fsck=no --type=$1 --options=$2 \$devnode $USB_PATH\""
}
usb_rule=$stage/usb.rules
{
  printf '# Written by systemd/install.sh: mount a USB stick labelled %s at %s (docs/operating.md).\n' \
    "$USB_LABEL" "$USB_PATH"
  usb_mount vfat "uid=$usb_uid,gid=$usb_gid,umask=0077,shortname=mixed,utf8,flush,noatime,nofail"
  usb_mount exfat "uid=$usb_uid,gid=$usb_gid,umask=0077,noatime,nofail"
  usb_mount ext4 "noatime,nofail"
} >"$usb_rule"
rule=$ROOT$USB_RULE
if cmp -s "$usb_rule" "$rule"; then
  say "udev rule $rule: already up to date"
else
  say "installing udev rule $rule (a stick labelled $USB_LABEL is mounted at $USB_PATH)"
  mkdir -p "$(dirname "$rule")" "$ROOT$USB_PATH"
  install -m 0644 "$usb_rule" "$rule.tmp"
  mv -f "$rule.tmp" "$rule"
  if [[ -z $ROOT ]] && command -v udevadm >/dev/null; then udevadm control --reload; fi
fi
mkdir -p "$ROOT$USB_PATH"

# --- 5. config ----------------------------------------------------------------------------------

config=$ROOT$CONFIG
if [[ -e $config ]]; then
  say "config $config: already there, left as it is"
else
  say "writing the default config $config"
  mkdir -p "$ROOT$CONFIG_DIR"
  # `appliance config --print-defaults` needs the package's dependencies; without them (pip
  # --no-deps) the file gets only a pointer to the documentation.
  if "$venv/bin/appliance" config --print-defaults >"$config.tmp" 2>"$stage/print-defaults.err" &&
    [[ -s $config.tmp ]]; then
    :
  else
    say "  ($venv/bin/appliance config --print-defaults did not work: $(tail -n 1 "$stage/print-defaults.err"))"
    say "  (writing a config of comments only: every setting at its default)"
    cat >"$config.tmp" <<EOF
# Config of the camera-trap appliance (TOML). Empty means every setting at its default.
# Each key, its default and its allowed values: docs/configuration.md in the appliance's
# source ($SRC).
EOF
  fi
  chmod 0644 "$config.tmp"
  mv -f "$config.tmp" "$config"
fi

# --- 6. systemd ---------------------------------------------------------------------------------

if [[ -n $ROOT ]]; then
  if [[ $(systemctl --root="$ROOT" is-enabled "$UNIT_NAME" 2>/dev/null || true) == enabled ]]; then
    say "$UNIT_NAME under $ROOT: already enabled"
  else
    say "enabling $UNIT_NAME under $ROOT (not started: --root)"
    systemctl --root="$ROOT" --quiet enable "$UNIT_NAME"
  fi
else
  if $unit_changed || [[ $(systemctl show --property=NeedDaemonReload --value "$UNIT_NAME") == yes ]]; then
    say "systemctl daemon-reload"
    systemctl daemon-reload
  fi
  if [[ $(systemctl is-enabled "$UNIT_NAME" 2>/dev/null || true) == enabled ]]; then
    say "$UNIT_NAME: already enabled"
  else
    say "enabling $UNIT_NAME (starts at boot)"
    systemctl --quiet enable "$UNIT_NAME"
  fi
  # Type=notify: start and restart wait until the appliance is up, or report that it failed.
  if ! systemctl --quiet is-active "$UNIT_NAME"; then
    say "starting $UNIT_NAME"
    systemctl start "$UNIT_NAME" || die "$UNIT_NAME did not start: see journalctl -u appliance -e"
  elif $unit_changed || $package_changed; then
    say "restarting $UNIT_NAME (the unit or the package changed)"
    systemctl restart "$UNIT_NAME" || die "$UNIT_NAME did not restart: see journalctl -u appliance -e"
  else
    say "$UNIT_NAME: already running"
  fi
fi

# --- 7. where to look ---------------------------------------------------------------------------

say ""
if [[ -n $ROOT ]]; then
  say "done: installed under $ROOT (nothing started). On the Pi itself:"
else
  say "done."
fi
say "  logs:    journalctl -u appliance -f"
say "  state:   systemctl status appliance"
say "  page:    http://<the Pi's address>:$WEB_PORT/ (web_port in the config; hostname -I shows the address)"
say "  config:  $CONFIG ($BOOT_CONFIG, when present, overrides it);"
say "           after editing it: systemctl restart appliance"
