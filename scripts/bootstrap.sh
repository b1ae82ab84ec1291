#!/usr/bin/env bash
# Installs everything the tests and the lab need on a fresh Debian 12 machine (run as root):
# Debian packages, a deb-src entry for building QEMU's upstream ivshmem-server, and a venv.
# Idempotent: a second run only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache="${IVSHMEM_FLEET_CACHE:-$here/.cache}"
mkdir -p "$cache"

apt_packages=(
  qemu-system-x86 qemu-utils          # the guests
  python3 python3-venv                # Debian's python for the venv (the pyenv shim does not run modules)
  gcc libc6-dev                       # static test programs
  dpkg-dev libglib2.0-dev meson ninja-build zlib1g-dev pkgconf   # upstream ivshmem-server build
  rsync git
  nftables iproute2                   # the integration tier cuts a migration link (packets dropped)
  systemd                             # systemd-analyze: the server unit's security score
  podman runc debootstrap             # the execution environment (scripts/ee.sh): built and run here
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
src_list=/etc/apt/sources.list.d/ivshmem-fleet-src.sources
if [ ! -f "$src_list" ]; then
  cat > "$src_list" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  need_update=1
fi
if [ ${#missing[@]} -gt 0 ] || [ -n "${need_update:-}" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  [ ${#missing[@]} -gt 0 ] && apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

venv="$cache/venv"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$here/tests/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r "$here/tests/requirements.txt"
  echo "$want" > "$stamp"
fi

# ansible-test and ansible-playbook find the collection through ansible_collections/ivshmem/fleet.
mkdir -p "$cache/collections/ansible_collections/ivshmem"
ln -sfn "$here" "$cache/collections/ansible_collections/ivshmem/fleet"
echo "bootstrap: ready ($venv)"
