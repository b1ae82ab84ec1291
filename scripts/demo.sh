#!/usr/bin/env bash
# The main job on the built-in local lab: three real virtual machines (TCG) act as hypervisor
# hosts. A shared-memory group (a master and two peers) is deployed master-first on hv1, filled
# with a known pattern, migrated to hv2 (verified: checksums and ID 0 before it runs), then a short
# rolling change runs across hv1 and hv2 with hv3 as the spare; a summary shows which guest runs
# where, with IDs and memory checksums. Installs what it needs; takes the lab down at the end
# (KEEP=1 keeps it up: python3 tests/lab/lab.py down removes it).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache="${IVSHMEM_FLEET_CACHE:-$here/.cache}"
"$here/scripts/bootstrap.sh" >/dev/null
export PATH="$cache/venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$cache/collections"
[ "${KEEP:-0}" = 1 ] || trap 'python3 "$here/tests/lab/lab.py" down' EXIT
inventory=$(python3 "$here/tests/lab/lab.py" up 3)
play() { ansible-playbook -i "$inventory" -e @"$here/playbooks/vars/lab_groups.yml" "$@"; }
play "$here/playbooks/deploy.yml"
ansible -i "$inventory" hv1 -m ansible.builtin.shell -a \
  'dd if=/dev/urandom of=/dev/shm/ivshmem-fleet-g1 bs=1M count=16 conv=notrunc,nocreat status=none; sha1sum /dev/shm/ivshmem-fleet-g1'
play -e group=g1 -e to=hv2 "$here/playbooks/migrate.yml"
play -e spare=hv3 -e rollout_id="demo-$(date +%s)" "$here/playbooks/rollout.yml"
play "$here/playbooks/summary.yml"
