#!/usr/bin/env bash
# Builds the minimal Linux test guest from distribution packages: Debian's cloud kernel and an
# initramfs of busybox-static plus our static workload (ivshmem-workload.c). Boots under TCG in
# seconds. Output in $GUEST_CACHE (vmlinuz, initrd.img); rebuilt when this recipe changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
recipe=$(cat "$here/build-guest.sh" "$here/ivshmem-workload.c" | sha256sum | cut -c1-16)
out="${GUEST_CACHE:-${IVSHMEM_FLEET_CACHE:-$repo/.cache}/guest}/$recipe"
if [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ]; then echo "$out"; exit 0; fi
need=()
for p in cpio gcc libc6-dev; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p"); done
[ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
apt-get download -qq "$kernel_pkg" busybox-static >/dev/null 2>&1 || { apt-get update -qq; apt-get download -qq "$kernel_pkg" busybox-static; }
dpkg -x "$kernel_pkg"_*.deb kernel
dpkg -x busybox-static_*.deb busybox
mkdir -p root/bin root/proc root/sys root/dev
cp busybox/bin/busybox root/bin/
for tool in sh mount cat sleep grep sed; do ln -s busybox "root/bin/$tool"; done
gcc -O2 -static -o root/bin/ivshmem-workload "$here/ivshmem-workload.c"
cat > root/init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mode=$(sed -n 's/.*ivw.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
ring=$(sed -n 's/.*ivw.ring=\([0-9]*\).*/\1/p' /proc/cmdline)
echo "IVW init mode=${mode:-peer}"
exec /bin/ivshmem-workload "${mode:-peer}" ${ring}
INIT
chmod +x root/init
mkdir -p "$out"
(cd root && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.img"
cp kernel/boot/vmlinuz-* "$out/vmlinuz"
chmod 644 "$out/vmlinuz" "$out/initrd.img"
echo "$out"
