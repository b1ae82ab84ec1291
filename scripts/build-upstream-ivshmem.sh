#!/usr/bin/env bash
# Builds QEMU's upstream ivshmem-server and ivshmem-client from the distribution's qemu source
# package (Debian ships neither), for the tests that run against the upstream server.
# Output: $IVSHMEM_FLEET_CACHE/upstream/bin/{ivshmem-server,ivshmem-client}. Never committed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache="${IVSHMEM_FLEET_CACHE:-$here/.cache}"
out="$cache/upstream"
if [ -x "$out/bin/ivshmem-server" ] && [ -x "$out/bin/ivshmem-client" ]; then
  echo "upstream ivshmem-server: cached ($out/bin)"; exit 0
fi
rm -rf "$out/src"; mkdir -p "$out/src" "$out/bin"
cd "$out/src"
apt-get source -qq qemu >/dev/null 2>&1
tree=$(find . -maxdepth 1 -type d -name 'qemu-*' | head -1)
mkdir -p "$tree/build" && cd "$tree/build"
../configure --without-default-features --disable-system --disable-user --enable-tools \
  --disable-docs --disable-install-blobs >/dev/null
nice -n 5 ninja -j"$(nproc)" contrib/ivshmem-server/ivshmem-server contrib/ivshmem-client/ivshmem-client >/dev/null
cp contrib/ivshmem-server/ivshmem-server contrib/ivshmem-client/ivshmem-client "$out/bin/"
cd "$out" && rm -rf src
echo "upstream ivshmem-server: built ($out/bin)"
