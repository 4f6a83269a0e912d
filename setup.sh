#!/usr/bin/env bash
# One command for a fresh Debian 12 (bookworm) host (run as root):
#   ./setup.sh        install what the lab needs, bring the lab up, deploy it, run every scenario
#                     on a small task set and print the comparison report's path
#   ./setup.sh test   install the same, check formatting and lint (ruff), then run the whole test
#                     suite (python -m pytest)
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-main}
case "$mode" in main|test|install) ;; *) echo "usage: $0 [main|test|install]" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "setup.sh needs root (bridges, containers, VMs, eBPF): run it with sudo" >&2; exit 1; }
# The node image is a bookworm build from the host's apt sources, and the lab wants Python 3.11.
. /etc/os-release
[ "${ID:-}" = debian ] && [ "${VERSION_ID:-}" = 12 ] || {
  echo "setup.sh supports Debian 12 (bookworm) hosts; this one is ${PRETTY_NAME:-unknown}. Elsewhere, set" \
    "image.mirror in lab.yaml to a Debian mirror and install setup.sh's APT_PACKAGES and Python 3.11 by hand" >&2
  exit 1
}

APT_PACKAGES=(
  # the node image and the nspawn provider
  mmdebstrap systemd-container iproute2 openssh-client e2fsprogs
  # the libvirt provider
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
  libvirt-dev pkg-config gcc libxml2-utils genisoimage dosfstools mtools
  # UEFI firmware, which a GPU node's VM boots with (big 64-bit BARs)
  ovmf
  # probes and captures on the host (tests run the collectors here too)
  bpftrace libbpf-tools bpfcc-tools python3-bpfcc tcpdump nftables ethtool
  # the report layout test renders reports headless
  chromium
  # NTP for the lab network (vms/timeserver.py)
  chrony
  # the workload's database, for tests on loopback
  postgresql
  python3-venv python3-dev
)

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> python: creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "==> python: installing the project and its dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[workload,test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

case "$mode" in
  install) ;;
  main)
    .venv/bin/lab image build
    .venv/bin/lab up
    .venv/bin/lab deploy
    .venv/bin/lab experiment all --tasks "${LAB_TASKS:-3}" --warmup 1
    ;;
  test)
    # no caches: this runs as root and would leave root-owned cache directories in the checkout
    echo "==> ruff: formatting and lint"
    .venv/bin/ruff format --no-cache --check . ||
      { echo "ruff: the files above are not formatted; run .venv/bin/ruff format ." >&2; exit 1; }
    .venv/bin/ruff check --no-cache . ||
      { echo "ruff: fix the findings above (.venv/bin/ruff check --fix . fixes those marked [*])" >&2; exit 1; }
    .venv/bin/python -m pytest -v -p no:cacheprovider --durations=40
    ;;
esac
