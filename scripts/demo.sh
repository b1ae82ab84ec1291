#!/usr/bin/env bash
# The main job on the built-in local lab: a shared-memory group (master and two peers) deployed
# master-first on this machine, then moved to a fresh server with the master migrated and
# verified, with a summary at the end. Installs what it needs; leaves nothing running
# (KEEP=1 keeps the group for a look).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache="${IVSHMEM_FLEET_CACHE:-$here/.cache}"
"$here/scripts/bootstrap.sh" >/dev/null
export PATH="$cache/venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$cache/collections"
run() {
  ansible-playbook -i localhost, -c local -e "ansible_python_interpreter=$cache/venv/bin/python" "$@"
}
cleanup() { [ "${KEEP:-0}" = 1 ] || run "$here/playbooks/demo_local_cleanup.yml" >/dev/null; }
trap cleanup EXIT
run "$here/playbooks/demo_local_cleanup.yml" >/dev/null
run "$here/playbooks/demo_local.yml"
