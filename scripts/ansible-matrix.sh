#!/usr/bin/env bash
# The declared ansible-core range, tested: every ansible-core from the lowest meta/runtime.yml
# admits (2.17) to 2.21, each on a Python it supports, runs ansible-test sanity on the copy that
# scripts/test.sh prepared, documents every plugin (ansible-doc) and runs the modules' localhost
# playbook (tests/playbooks/modules.yml: check mode, a real run, a second run changing nothing).
# 2.19 is the main venv's and runs in scripts/test.sh itself. Each version gets a venv of its own
# under the cache; Pythons come from pyenv (as on these machines) or PATH.
#   scripts/ansible-matrix.sh [VERSION ...]     default: all of them
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache="${IVSHMEM_FLEET_CACHE:-$here/.cache}"
# ansible-core version:Python version (each version's supported controller Pythons).
matrix=(2.17:3.11 2.18:3.11 2.20:3.12 2.21:3.13)
wanted=("$@")

python_for() {
  local version=$1 found
  found=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python"$version" 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$found" ] || found=$(command -v "python$version" || true)
  [ -n "$found" ] || { echo "ansible-matrix: no Python $version here" >&2; exit 1; }
  echo "$found"
}

sanity_root="$cache/sanity/ansible_collections/ivshmem/fleet"
[ -d "$sanity_root/.git" ] || { echo "ansible-matrix: run scripts/test.sh first (it prepares $sanity_root)" >&2; exit 1; }
for entry in "${matrix[@]}"; do
  core=${entry%%:*} py=${entry##*:}
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $core "* ]]; then continue; fi
  started=$SECONDS
  venv="$cache/matrix/ansible-core-$core"
  if [ ! -x "$venv/bin/ansible-test" ]; then
    "$(python_for "$py")" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "ansible-core==$core.*" 2>&1 | grep -v "^WARNING: Location" || true
  fi
  echo "--- ansible-core $("$venv/bin/python" -c 'import ansible.release as r; print(r.__version__)') on Python $py"
  # ansible-test bootstraps pip from a host out of reach: the stand-in scripts/test.sh uses.
  pip_version=$("$venv/bin/python" - <<'PY'
import inspect, re
import ansible_test._internal.python_requirements as requirements
print(re.search(r"pip='([0-9.]+)'", inspect.getsource(requirements)).group(1))
PY
)
  mkdir -p ~/.ansible/test/cache
  cp "$here/scripts/ansible-test-get-pip.py" ~/.ansible/test/cache/get_pip_${pip_version//./_}.py
  # The same interpreter for ansible-test's own venvs: ansible-test looks for pythonX.Y on PATH.
  (cd "$sanity_root" && PATH="$venv/bin:$(dirname "$(python_for "$py")"):$PATH" \
     ansible-test sanity --venv --python "$py" --color no)
  export ANSIBLE_COLLECTIONS_PATH="$cache/collections" ANSIBLE_NOCOLOR=1
  mapfile -t plugins < <(cd "$here" && ls plugins/modules/*.py plugins/action/*.py 2>/dev/null | xargs -n1 basename | sed 's/\.py$//' | sort -u)
  "$venv/bin/ansible-doc" -t module "${plugins[@]/#/ivshmem.fleet.}" >/dev/null
  runtime=$(mktemp -d /tmp/ivshmem-fleet-matrix.XXXXXX)
  chmod 755 "$runtime"
  "$venv/bin/ansible-playbook" -i localhost, -c local -e ansible_python_interpreter=/usr/bin/python3 \
    -e runtime_dir="$runtime" "$here/tests/playbooks/modules.yml" | tail -3
  rm -rf "$runtime"
  echo "--- ansible-core $core passed in $((SECONDS - started)) s"
done
