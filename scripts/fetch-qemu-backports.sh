#!/usr/bin/env bash
# Unpacks the QEMU that Debian 12's bookworm-backports ships (10.0) into the cache, beside the
# distribution's 7.2, for the tests that move groups between QEMU versions on one machine.
# Under a private apt configuration (its own lists and archives): the machine's apt sources are
# not touched. Output: $IVSHMEM_FLEET_CACHE/qemu-backports/bin/qemu-system-x86_64, a wrapper that
# points QEMU at its own firmware (without -L it loads 7.2's), and VERSION. Never committed.
# The .deb files stay in $IVSHMEM_FLEET_CACHE/qemu-backports/debs (the lab image ships them).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache="${IVSHMEM_FLEET_CACHE:-$here/.cache}"
out="$cache/qemu-backports"
if [ -x "$out/bin/qemu-system-x86_64" ] && [ -s "$out/VERSION" ]; then
  echo "QEMU from backports: cached ($(cat "$out/VERSION"))"; exit 0
fi
rm -rf "$out"; mkdir -p "$out/apt/lists/partial" "$out/apt/archives/partial" "$out/debs" "$out/root"
cat > "$out/apt/sources.list" <<'SRC'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
SRC
apt_opts=(-o "Dir::Etc::SourceList=$out/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$out/apt/lists" -o "Dir::Cache::Archives=$out/apt/archives"
          -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o "APT::Default-Release=bookworm-backports")
apt-get "${apt_opts[@]}" -qq update
cd "$out/debs"
# qemu-system-x86 and what it needs beyond bookworm's own libraries (checked with ldd).
apt-get "${apt_opts[@]}" -qq download qemu-system-x86 qemu-system-data qemu-system-common seabios
for deb in ./*.deb; do dpkg -x "$deb" "$out/root"; done
mkdir -p "$out/bin"
cat > "$out/bin/qemu-system-x86_64" <<WRAP
#!/bin/sh
# QEMU from bookworm-backports, with its own modules and firmware (not 7.2's).
QEMU_MODULE_DIR="$out/root/usr/lib/x86_64-linux-gnu/qemu" export QEMU_MODULE_DIR
exec "$out/root/usr/bin/qemu-system-x86_64" -L "$out/root/usr/share/qemu" -L "$out/root/usr/share/seabios" "\$@"
WRAP
chmod 0755 "$out/bin/qemu-system-x86_64"
# Guests run under their own accounts: they must reach the binary and its firmware.
chmod -R a+rX "$out/root" "$out/bin"
"$out/bin/qemu-system-x86_64" --version | head -1 | sed 's/^QEMU emulator version //' > "$out/VERSION"
echo "QEMU from backports: unpacked ($(cat "$out/VERSION"))"
