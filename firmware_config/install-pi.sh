#!/usr/bin/env bash
# Raspberry Pi appliance install (called by install.sh):
#
#   bash firmware_config/install-pi.sh pi 0          install or update; safe to run again
#   bash firmware_config/install-pi.sh uninstall 0   remove units, venv, rules; keep /etc/edge, /var/lib/edge, users
#   bash firmware_config/install-pi.sh uninstall 1   ... and purge config, gallery and the edge/edge-door users
#
# Layout: /opt/edge/venv (--system-site-packages: picamera2, systemd-python, gpiozero/lgpio from apt),
# /opt/edge/models, /opt/edge/firmware_config, /etc/edge/edge.toml, /var/lib/edge (StateDirectory),
# /etc/systemd/system/edge-{recognizer,door,sync}.service + edge-door.socket, /etc/udev/rules.d/99-edge.rules.
# edge-sync.service (gallery sync over MQTT) is installed always and enabled only when [fleet] broker is set.
set -euo pipefail

mode="${1:-pi}"
purge="${2:-0}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

PREFIX="${EDGE_PREFIX:-/opt/edge}"
ETC="${EDGE_ETC:-/etc/edge}"
STATE=/var/lib/edge
UNITS=/etc/systemd/system
RULES=/etc/udev/rules.d/99-edge.rules
DROPIN="$UNITS/edge-recognizer.service.d/network-sinks.conf"
APT_PACKAGES=(python3-venv python3-pip python3-picamera2 python3-systemd python3-gpiozero python3-lgpio
              python3-paho-mqtt python3-cryptography)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf 'install-pi.sh: %s\n' "$*" >&2; exit 1; }
have_systemd() { [ -d /run/systemd/system ]; }

[ "$(id -u)" = 0 ] || exec sudo --preserve-env=EDGE_PREFIX,EDGE_ETC bash "$0" "$@"

# Copy src to dst only when the content differs; prints "changed" when it did.
install_file() {
  local mode="$1" src="$2" dst="$3"
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then return 0; fi
  install -D -m "$mode" "$src" "$dst"
  echo changed
}

ensure_group() { getent group "$1" >/dev/null || groupadd --system "$1"; }

ensure_user() {  # name home groups...
  local name="$1" home="$2"; shift 2
  if ! id -u "$name" >/dev/null 2>&1; then
    useradd --system --home-dir "$home" --no-create-home --shell /usr/sbin/nologin --user-group "$name"
  fi
  local g
  for g in "$@"; do
    id -nG "$name" | tr ' ' '\n' | grep -qx "$g" || usermod -aG "$g" "$name"
  done
}

sync_enabled() {  # does [fleet] name a broker?
  "$PREFIX/venv/bin/python" - "$ETC/edge.toml" <<'PY'
import sys
from edge.config import load_config
sys.exit(0 if load_config(sys.argv[1]).fleet.broker else 1)
PY
}

sinks_enabled() {  # does [events] turn on a network sink?
  "$PREFIX/venv/bin/python" - "$ETC/edge.toml" <<'PY'
import sys
from edge.config import load_config
e = load_config(sys.argv[1]).events
sys.exit(0 if (e.webhook_url or e.mqtt_host) else 1)
PY
}

boot_config() {
  local f
  for f in /boot/firmware/config.txt /boot/config.txt; do
    [ -f "$f" ] && { echo "$f"; return; }
  done
}

# Before apt or anything else: the appliance needs 64-bit Raspberry Pi OS (bookworm).
# On 32-bit there is no ai-edge-litert wheel; on plain Debian arm64 python3-picamera2 and
# python3-lgpio do not exist, and the install would die half-way after apt.
check_platform() {
  local arch; arch="$(uname -m)"
  if [ "$arch" != aarch64 ]; then
    die "this needs 64-bit Raspberry Pi OS (bookworm); uname -m says $arch. On a 32-bit (armv7l) image there is
no TFLite runtime wheel (ai-edge-litert is 64-bit only): flash 'Raspberry Pi OS (64-bit)' with Raspberry Pi Imager.
For a dev/demo install on another machine use ./install.sh without --pi."
  fi
  if [ ! -f /etc/rpi-issue ] && ! apt-cache show python3-picamera2 >/dev/null 2>&1; then
    die "this needs Raspberry Pi OS (64-bit, bookworm): this system has no Raspberry Pi apt repository
(python3-picamera2 and python3-lgpio are not available here), so the camera and GPIO stack cannot be installed.
For a dev/demo install on another machine use ./install.sh without --pi."
  fi
}

install_pi() {
  check_platform
  if [ -r /proc/device-tree/model ]; then
    say "device: $(tr -d '\0' </proc/device-tree/model)"
  else
    warn "this does not look like a Raspberry Pi; installing anyway (camera and GPIO may not work)"
  fi

  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "apt: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi

  say "users and groups"
  ensure_group gpio
  ensure_group video
  ensure_user edge "$STATE" video
  ensure_user edge-door /nonexistent gpio

  say "venv: $PREFIX/venv (--system-site-packages)"
  install -d -m 0755 "$PREFIX"
  [ -x "$PREFIX/venv/bin/python" ] || python3 -m venv --system-site-packages "$PREFIX/venv"
  "$PREFIX/venv/bin/python" -m pip install -q --upgrade pip
  # Not editable: /opt/edge must not depend on this checkout staying where it is.
  "$PREFIX/venv/bin/python" -m pip install -q --upgrade "$repo"

  say "models -> $PREFIX/models"
  [ -d "$repo/models" ] || die "no models/ folder in $repo"
  rm -rf "$PREFIX/models.new"
  cp -a "$repo/models" "$PREFIX/models.new"
  rm -rf "$PREFIX/models.old"
  [ -d "$PREFIX/models" ] && mv "$PREFIX/models" "$PREFIX/models.old"
  mv "$PREFIX/models.new" "$PREFIX/models"
  rm -rf "$PREFIX/models.old"
  chmod -R a+rX "$PREFIX/models"
  rm -rf "$PREFIX/firmware_config"
  cp -a "$here" "$PREFIX/firmware_config"

  say "config: $ETC/edge.toml"
  install -d -m 0755 "$ETC"
  if [ ! -f "$ETC/edge.toml" ]; then
    install -m 0644 "$here/edge.toml" "$ETC/edge.toml"
  else
    echo "   keeping the existing $ETC/edge.toml (the example is $PREFIX/firmware_config/edge.toml)"
  fi
  "$PREFIX/venv/bin/edge" check-config --for syntax -c "$ETC/edge.toml" >/dev/null || die "$ETC/edge.toml is invalid (see above)"
  # The full check (models, gallery, camera) is the units' ExecStartPre; a camera that is not
  # connected yet must not stop the install, but the operator should hear about it now.
  if ! "$PREFIX/venv/bin/edge" check-config -c "$ETC/edge.toml" >/dev/null; then
    warn "the recognizer will not start until the problem above is fixed (then: sudo systemctl restart edge-recognizer)"
  fi

  # The operator types `sudo edge enroll add NAME` over SSH: the wrapper points every
  # command at the appliance's config (the embedded default is the demo).
  say "command: /usr/local/bin/edge"
  cat >/usr/local/bin/edge.new <<WRAP
#!/bin/sh
# edge with the appliance config; -c or EDGE_CONFIG still override it.
EDGE_CONFIG="\${EDGE_CONFIG:-$ETC/edge.toml}" exec "$PREFIX/venv/bin/edge" "\$@"
WRAP
  chmod 0755 /usr/local/bin/edge.new && mv /usr/local/bin/edge.new /usr/local/bin/edge

  say "state: $STATE"
  install -d -m 0750 -o edge -g edge "$STATE"

  say "udev rules and systemd units"
  local changed=""
  changed+=$(install_file 0644 "$here/99-edge.rules" "$RULES")
  local unit
  for unit in edge-recognizer.service edge-door.service edge-door.socket edge-sync.service; do
    changed+=$(install_file 0644 "$here/$unit" "$UNITS/$unit")
  done
  if sinks_enabled; then
    changed+=$(install_file 0644 "$here/edge-recognizer-network-sinks.conf" "$DROPIN")
  elif [ -f "$DROPIN" ]; then
    rm -f "$DROPIN"; rmdir --ignore-fail-on-non-empty "$(dirname "$DROPIN")"; changed+=changed
  fi

  local boot; boot="$(boot_config || true)"
  if [ -n "$boot" ] && ! grep -q '^camera_auto_detect\|^dtoverlay=\(imx\|ov\)' "$boot"; then
    say "camera: adding the edge block to $boot (reboot to apply)"
    cp -a "$boot" "$boot.edge-backup"
    { echo "# BEGIN edge"; grep -v '^#' "$here/config.txt" | sed '/^$/d'; echo "# END edge"; } >>"$boot"
  fi

  if have_systemd; then
    udevadm control --reload-rules && udevadm trigger --subsystem-match=gpio --subsystem-match=video4linux \
      --subsystem-match=media --subsystem-match=dma_heap || true
    systemctl daemon-reload
    systemctl enable edge-door.socket edge-door.service edge-recognizer.service
    systemctl start edge-door.socket
    # Pick up the new code and units on a re-run; a first run just starts them.  A unit that
    # fails here (no camera connected yet, say) stays locked and must not abort the installer.
    systemctl restart edge-door.service || warn "edge-door did not start: journalctl -u edge-door -n 20"
    systemctl restart edge-recognizer.service || warn "edge-recognizer did not start (no camera connected yet?): \
connect the camera, check 'edge check-config', then 'sudo systemctl restart edge-recognizer'; journalctl -u edge-recognizer -n 20"
    if sync_enabled; then
      systemctl enable edge-sync.service
      systemctl restart edge-sync.service || warn "edge-sync did not start: edge check-config --for sync; journalctl -u edge-sync -n 20"
    else
      systemctl disable --now edge-sync.service 2>/dev/null || true
    fi
    sleep 2
    systemctl --no-pager --lines=5 status edge-recognizer.service edge-door.service || true
  else
    warn "systemd is not running here: units installed but not started"
  fi
  [ -n "$changed" ] && echo "   units or rules changed"
  say "done: journalctl -u edge-recognizer -f   |   edge events -c $ETC/edge.toml -f"
}

uninstall_pi() {
  say "uninstalling edge (purge=$purge)"
  if have_systemd; then
    systemctl disable --now edge-recognizer.service edge-door.service edge-door.socket edge-sync.service 2>/dev/null || true
  fi
  rm -f "$UNITS/edge-recognizer.service" "$UNITS/edge-door.service" "$UNITS/edge-door.socket" "$UNITS/edge-sync.service" "$DROPIN" "$RULES" /usr/local/bin/edge
  rmdir "$(dirname "$DROPIN")" 2>/dev/null || true
  if have_systemd; then
    systemctl daemon-reload
    udevadm control --reload-rules || true
  fi
  rm -rf "$PREFIX"
  local boot; boot="$(boot_config || true)"
  if [ -n "$boot" ] && grep -q '^# BEGIN edge' "$boot"; then
    sed -i '/^# BEGIN edge$/,/^# END edge$/d' "$boot"
  fi
  if [ "$purge" = 1 ]; then
    rm -rf "$ETC" "$STATE"
    id -u edge >/dev/null 2>&1 && userdel edge
    id -u edge-door >/dev/null 2>&1 && userdel edge-door
    getent group edge >/dev/null && groupdel edge 2>/dev/null || true
    getent group edge-door >/dev/null && groupdel edge-door 2>/dev/null || true
    say "purged: config, gallery and users removed"
  else
    say "kept $ETC and $STATE and the users edge, edge-door (uninstall with --purge to remove them)"
  fi
}

case "$mode" in
  pi) install_pi ;;
  uninstall) uninstall_pi ;;
  *) die "unknown mode $mode (pi or uninstall)" ;;
esac
