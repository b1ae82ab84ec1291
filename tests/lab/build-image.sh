#!/usr/bin/env bash
# Builds the lab hosts' image from Debian packages: a minimal Debian 12 with systemd, sshd,
# python3 and QEMU, booted with its own kernel and initrd (no bootloader). Cached under
# $LAB_CACHE and rebuilt only when this recipe changes. Each VM gets its machine-id and SSH host
# keys at first boot, so one image serves every host.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="${LAB_CACHE:-${IVSHMEM_FLEET_CACHE:-$repo/.cache}/lab}"
recipe=$(cat "$here/build-image.sh" "$here/idle_guest.py" | sha256sum | cut -c1-16)
image="$cache/image-$recipe"
if [ -f "$image/base.qcow2" ] && [ -f "$image/vmlinuz" ]; then
  echo "lab image: cached ($image)"; exit 0
fi
for tool in debootstrap mkfs.ext4 qemu-img ssh-keygen; do
  command -v "$tool" >/dev/null || missing=1
done
if [ -n "${missing:-}" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    debootstrap e2fsprogs qemu-utils openssh-client >/dev/null
fi
work="$cache/build-$recipe"
rm -rf "$work"; mkdir -p "$work" "$cache/debcache" "$cache/ssh"
[ -f "$cache/ssh/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C ivshmem-fleet-lab -f "$cache/ssh/id_ed25519"
rootfs="$work/rootfs"
nice -n 5 debootstrap --variant=minbase --cache-dir="$cache/debcache" \
  --include=systemd-sysv,udev,dbus,openssh-server,python3,python3-apt,sudo,iproute2,procps,qemu-system-x86,qemu-utils,linux-image-cloud-amd64 \
  bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log"; exit 1; }

# --- customise ------------------------------------------------------------------------------
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' > "$rootfs/etc/fstab"
install -d -m 700 "$rootfs/root/.ssh"
install -m 600 "$cache/ssh/id_ed25519.pub" "$rootfs/root/.ssh/authorized_keys"
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' \
  > "$rootfs/etc/ssh/sshd_config.d/lab.conf"
# Per-VM identity: empty machine-id (systemd makes one at first boot) and host keys made at boot.
rm -f "$rootfs"/etc/ssh/ssh_host_* "$rootfs/var/lib/dbus/machine-id"
: > "$rootfs/etc/machine-id"
cat > "$rootfs/etc/systemd/system/lab-ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Make this lab host's own SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
UNIT
# eth0: user-mode network (SSH from the machine); eth1: the lab network, address from the kernel command line.
cat > "$rootfs/etc/systemd/network/10-eth0.network" <<'NET'
[Match]
Name=eth0
[Network]
DHCP=ipv4
NET
chroot "$rootfs" systemctl enable -q systemd-networkd systemd-network-generator lab-ssh-hostkeys.service
for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do
  chroot "$rootfs" systemctl disable -q "$unit" 2>/dev/null || true
done
chroot "$rootfs" systemctl mask -q systemd-timesyncd.service 2>/dev/null || true
echo lab > "$rootfs/etc/hostname"
# The lab guests' kernel: it leaves them halted, costing the host nothing (idle_guest.py).
install -d -m 755 "$rootfs/usr/local/share/ivshmem-fleet-lab"
python3 "$here/idle_guest.py" "$rootfs/usr/local/share/ivshmem-fleet-lab/idle-guest.bin"
chmod 644 "$rootfs/usr/local/share/ivshmem-fleet-lab/idle-guest.bin"
# QEMU 10.0 for upgrade rollouts, shipped as a local package source (lab hosts reach no mirror):
# what installing bookworm-backports' qemu-system-x86 needs beyond this image, resolved by apt
# against the image's own package state, in a flat repository. Unused until a rollout names it
# (hypervisor_qemu_source: {uris: "file:/var/local/ivshmem-fleet-qemu", suites: "./", trusted: true}).
backports="$work/backports.list"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main" > "$backports"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" >> "$backports"
in_image=(-o "Dir=$rootfs" -o "Dir::Etc::SourceList=$backports" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::Etc::Trusted=/etc/apt/trusted.gpg" -o "Dir::Etc::TrustedParts=/etc/apt/trusted.gpg.d"
          -o "Dir::Bin::dpkg=/usr/bin/dpkg" -o "DPkg::Options::=--root=$rootfs" -o "APT::Sandbox::User=root")
apt-get "${in_image[@]}" -qq update
rm -f "$rootfs"/var/cache/apt/archives/*.deb
apt-get "${in_image[@]}" -qq -y --download-only --no-install-recommends install qemu-system-x86/bookworm-backports qemu-utils/bookworm-backports
repo="$rootfs/var/local/ivshmem-fleet-qemu"
install -d -m 755 "$repo"
mv "$rootfs"/var/cache/apt/archives/*.deb "$repo/"
(cd "$repo" && dpkg-scanpackages --multiversion . /dev/null > Packages 2>/dev/null)
ls "$repo"/qemu-system-x86_*bpo12*.deb >/dev/null
# Lab hosts reach no mirror: the image names none (a rollout adds the local source above).
: > "$rootfs/etc/apt/sources.list"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

# --- image ------------------------------------------------------------------------------------
cp "$rootfs"/boot/vmlinuz-* "$work/vmlinuz"
cp "$rootfs"/boot/initrd.img-* "$work/initrd.img"
chmod 644 "$work/vmlinuz" "$work/initrd.img"
mkfs.ext4 -q -F -L labroot -d "$rootfs" "$work/base.raw" 3G
qemu-img convert -f raw -O qcow2 "$work/base.raw" "$work/base.qcow2"
mkdir -p "$image"
mv "$work/base.qcow2" "$work/vmlinuz" "$work/initrd.img" "$image/"
rm -rf "$work"
# Older images of other recipes are dropped.
find "$cache" -maxdepth 1 -name 'image-*' ! -name "image-$recipe" -exec rm -rf {} +
echo "lab image: built ($image)"
