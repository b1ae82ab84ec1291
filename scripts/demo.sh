#!/usr/bin/env bash
# The main job on the built-in local lab: three real virtual machines (TCG) act as hypervisor
# hosts. A shared-memory group (a master and two peers) is deployed master-first on hv1, filled
# with a known pattern, migrated to hv2 (verified: checksums and ID 0 before it runs), then a
# rolling QEMU upgrade (7.2 to 10.0, from the local package source the lab image carries) runs
# across hv1 and hv2 with hv3 as the spare, each group moved off its host and back; a summary
# shows each host's QEMU, which guest runs where with its ID and machine type, and the memory
# checksum beside the one taken when the pattern was written (it fails where they differ).
# Installs what it needs; takes the lab down at the end (KEEP=1 keeps it up: python3
# tests/lab/lab.py down removes it).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache="${IVSHMEM_FLEET_CACHE:-$here/.cache}"
"$here/scripts/bootstrap.sh" >/dev/null
export PATH="$cache/venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$cache/collections"
[ "${KEEP:-0}" = 1 ] || trap 'python3 "$here/tests/lab/lab.py" down' EXIT
inventory=$(python3 "$here/tests/lab/lab.py" up 3)
play() { ansible-playbook -i "$inventory" -e @"$here/playbooks/vars/lab_groups.yml" "$@"; }
play "$here/playbooks/deploy.yml"
written=$(ansible -i "$inventory" hv1 -m ansible.builtin.shell -a \
  'dd if=/dev/urandom of=/dev/shm/ivshmem-fleet-g1 bs=1M count=16 conv=notrunc,nocreat status=none; sha1sum /dev/shm/ivshmem-fleet-g1')
echo "$written"
sha1=$(grep -o '^[0-9a-f]\{40\}' <<<"$written")
play -e group=g1 -e to=hv2 "$here/playbooks/migrate.yml"
play -e spare=hv3 -e rollout_id="demo-$(date +%s)" -e rollout_qemu_upgrade=true \
  -e '{"rollout_qemu_source": {"uris": "file:/var/local/ivshmem-fleet-qemu", "suites": "./", "trusted": true}}' \
  "$here/playbooks/rollout.yml"
play -e "{\"summary_written\": {\"g1\": \"$sha1\"}}" "$here/playbooks/summary.yml"
