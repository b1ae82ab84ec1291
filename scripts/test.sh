#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (root): installs what it needs, then runs
# ansible-test sanity, ansible-lint (production profile), the changelog lint, unit tests,
# real-QEMU integration tests (builtin and upstream servers), the modules through
# ansible-playbook, and last the real-VM tier: the Molecule scenario on a lab of two TCG virtual
# machines (a rolling QEMU upgrade moving a restart group and a live group off and back), verified
# with pytest-testinfra. Fails when any of it fails.
# SKIP_LAB=1 skips the real-VM tier (for a quick local run).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
cache="${IVSHMEM_FLEET_CACHE:-$here/.cache}"
export IVSHMEM_FLEET_CACHE="$cache"

step() { printf '\n=== %s (at %d s)\n' "$*" "$SECONDS"; }

step "install (apt, venv, upstream ivshmem-server, QEMU 10.0 from backports)"
scripts/bootstrap.sh
scripts/build-upstream-ivshmem.sh
scripts/fetch-qemu-backports.sh
venv="$cache/venv"
export PATH="$venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$cache/collections"

step "ansible-test sanity"
# ansible-test wants the collection at .../ansible_collections/ivshmem/fleet: test a copy there.
# It lists files with git, so the copy is a git work tree of its own.
sanity_root="$cache/sanity/ansible_collections/ivshmem/fleet"
mkdir -p "$sanity_root"
rsync -a --delete --exclude .cache --exclude .git --exclude tests/output "$here/" "$sanity_root/"
(cd "$sanity_root" && { [ -d .git ] || git init -q .; } && git add -A)
# ansible-test bootstraps pip in its venvs with a script from a host this machine cannot reach.
pip_version=$(python - <<'PY'
import inspect, re
import ansible_test._internal.python_requirements as requirements
print(re.search(r"pip='([0-9.]+)'", inspect.getsource(requirements)).group(1))
PY
)
mkdir -p ~/.ansible/test/cache
cp scripts/ansible-test-get-pip.py ~/.ansible/test/cache/get_pip_${pip_version//./_}.py
(cd "$sanity_root" && ansible-test sanity --venv --python 3.11 --color no)

step "ansible-lint (production profile)"
# Molecule's prerun installs a copy of this collection into ~/.ansible/collections, and
# ansible-lint finds that copy before this tree: drop one an earlier run left behind.
rm -rf "$HOME/.ansible/collections/ansible_collections/ivshmem/fleet"
ansible-lint --profile production --offline -q

step "changelog fragments"
antsibull-changelog lint

step "publishing: the tarball, galaxy-importer, the docs lint and the docsite"
scripts/check-publishing.sh

step "execution environment (ansible-builder introspect, then built with podman)"
# What an execution environment needs for this collection: cryptography (the migration CA, which
# ansible-core needs anyway) and the SSH client (meta/execution-environment.yml, requirements.txt,
# bindep.txt).
introspect=$(ansible-builder introspect --sanitize "$cache/collections")
echo "$introspect"
grep -q "^- 'cryptography  # from collection ivshmem.fleet'$" <<<"$introspect"
grep -q "openssh-client \[platform:dpkg\]  # from collection ivshmem.fleet" <<<"$introspect"
# A real one, built with podman; the VM tier's side effect moves a group from inside it.
scripts/ee.sh build

step "pytest: unit, real-QEMU integration, playbooks"
python -m pytest -q -p no:cacheprovider tests/unit tests/integration

# The declared ansible-core range (2.17, 2.18, 2.20, 2.21 beside this venv's 2.19): sanity,
# ansible-doc and the modules' localhost playbook on each. It runs beside the VM tier, whose
# TCG hosts leave a core to spare; its log is shown, and its result counted, at the end.
matrix_log="$cache/ansible-matrix.log"
matrix_started=$SECONDS
if [ "${SKIP_LAB:-0}" = 1 ]; then
  step "ansible-core matrix"
  scripts/ansible-matrix.sh
  echo "real-VM tier skipped (SKIP_LAB=1)"; exit 0
fi
nice -n 10 scripts/ansible-matrix.sh >"$matrix_log" 2>&1 &
matrix_pid=$!
step "Molecule on real VMs"
# The scenario lives in molecule/ at the collection root; newer Molecule looks in
# extensions/molecule/ for collections, so point its glob here.
export MOLECULE_GLOB='molecule/*/molecule.yml'
trap 'python3 tests/lab/lab.py down >/dev/null 2>&1 || true' EXIT
# A run cut short (Ctrl-C, a killed job) leaves Molecule's state saying the lab exists, and the
# next run would skip create: start from destroyed.
molecule destroy >/dev/null 2>&1 || true
# Every line carries the suite's elapsed seconds: what each step and task costs is in the log.
molecule test 2>&1 | while IFS= read -r line; do printf '[%4d s] %s\n' "$SECONDS" "$line"; done
step "ansible-core matrix (started at $matrix_started s, beside the VM tier)"
matrix_status=0
wait "$matrix_pid" || matrix_status=$?
grep -v '^WARNING: Location' "$matrix_log" | grep -E '^(---|FATAL|ERROR)|passed|failed' || true
[ "$matrix_status" = 0 ] || { tail -50 "$matrix_log"; echo "ansible-core matrix failed"; exit 1; }
echo "=== the whole suite passed in $SECONDS s"
