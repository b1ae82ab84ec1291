#!/usr/bin/env bash
# What a publisher checks before an upload (issue 29): the collection tarball as
# `ansible-galaxy collection build` makes it, its contents (what users need, nothing of the lab),
# galaxy-importer on it as Galaxy and Automation Hub run it (ansible-doc and ansible-lint, no
# container, no network), `antsibull-docs lint-collection-docs --plugin-docs`, and the docsite
# built with antsibull-docs and Sphinx, warnings as errors. Fails on any error or warning.
#
# Run from anywhere with the venv's tools on PATH (scripts/bootstrap.sh makes it; the publishing
# tools are in tests/requirements.txt). Writes everything under .cache/publish/:
#   ivshmem-fleet-VERSION.tar.gz, galaxy-importer.log, importer_result.json, docs-lint.log,
#   docsite/build/html/index.html (the docsite), docsite.log
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache="${IVSHMEM_FLEET_CACHE:-$here/.cache}"
out="$cache/publish"
[ -d "$cache/venv/bin" ] && PATH="$cache/venv/bin:$PATH"
export PATH
export ANSIBLE_COLLECTIONS_PATH="$cache/collections"
export ANSIBLE_NOCOLOR=1
start=$SECONDS
failed=()
step() { printf '== %s (%ds)\n' "$*" $((SECONDS - start)); }
fail() { echo "check-publishing: $*" >&2; failed+=("$1"); }

for tool in ansible-galaxy ansible-doc antsibull-docs sphinx-build; do
  command -v "$tool" >/dev/null || { echo "check-publishing: $tool not found (run scripts/bootstrap.sh)" >&2; exit 2; }
done
python -c 'import galaxy_importer' 2>/dev/null || { echo "check-publishing: galaxy-importer not installed (run scripts/bootstrap.sh)" >&2; exit 2; }

# The docs tools find the collection where ansible finds it: the checkout, linked as bootstrap.sh does.
mkdir -p "$cache/collections/ansible_collections/ivshmem"
ln -sfn "$here" "$cache/collections/ansible_collections/ivshmem/fleet"
rm -rf "$out"
mkdir -p "$out"

step "build"
ansible-galaxy collection build --force --output-path "$out" "$here" >"$out/build.log" 2>&1 || { cat "$out/build.log" >&2; exit 1; }
tarball=$(ls "$out"/ivshmem-fleet-*.tar.gz)
echo "   $(basename "$tarball"): $(tar tzf "$tarball" | grep -vc '/$') files, $(du -k "$tarball" | cut -f1) KiB"

step "tarball contents"
# Top-level entries users need, and nothing else (a new directory at the root must be shipped or
# added to galaxy.yml's build_ignore on purpose).
allowed='^(MANIFEST\.json|FILES\.json|README\.md|CHANGELOG\.md|COPYING|LICENSES|requirements\.txt|bindep\.txt|changelogs|docs|meta|playbooks|plugins|roles)$'
unexpected=$(tar tzf "$tarball" | cut -d/ -f1 | sort -u | grep -Ev "$allowed" || true)
[ -z "$unexpected" ] || fail tarball "unexpected at the tarball's root: $(echo $unexpected)"
extra_changelogs=$(tar tzf "$tarball" | grep '^changelogs/.' | grep -v '^changelogs/changelog\.yaml$' || true)
[ -z "$extra_changelogs" ] || fail tarball "changelogs/ ships more than changelog.yaml: $(echo $extra_changelogs)"
for need in README.md CHANGELOG.md COPYING changelogs/changelog.yaml meta/runtime.yml meta/execution-environment.yml \
    requirements.txt bindep.txt $(cd "$here" && ls -d roles/*/ | sed 's|/$|/README.md|'); do
  tar tzf "$tarball" "$need" >/dev/null 2>&1 || fail tarball "$need is missing from the tarball"
done
if tar xzf "$tarball" -O MANIFEST.json | grep -Eq 'example\.(invalid|com)'; then
  fail tarball "galaxy.yml still has placeholder URLs"
fi

# galaxy-importer as Galaxy runs it on an upload (ansible-doc, ansible-lint --profile production),
# minus ansible-test (it needs a container). Runs while the docs are checked.
cat >"$out/galaxy-importer.cfg" <<CFG
[galaxy-importer]
LOG_LEVEL_MAIN = INFO
RUN_ANSIBLE_TEST = False
RUN_ANSIBLE_DOC = True
RUN_ANSIBLE_LINT = True
OFFLINE_ANSIBLE_LINT = True
RUN_FLAKE8 = False
CHECK_CHANGELOG = True
TMP_ROOT_DIR = $out/tmp
ANSIBLE_LOCAL_TMP = $out/ansible-tmp
CFG
mkdir -p "$out/tmp" "$out/ansible-tmp"
step "galaxy-importer (in the background)"
(cd "$out" && GALAXY_IMPORTER_CONFIG="$out/galaxy-importer.cfg" \
  python -m galaxy_importer.main "$tarball" >"$out/galaxy-importer.log" 2>&1; echo $? >"$out/galaxy-importer.rc") &
importer=$!

step "antsibull-docs lint-collection-docs --plugin-docs"
if ! antsibull-docs lint-collection-docs --plugin-docs "$here" >"$out/docs-lint.log" 2>&1; then
  cat "$out/docs-lint.log" >&2
  fail docs-lint "the docs lint failed"
fi

step "docsite"
site="$out/docsite"
mkdir -p "$site"
chmod 755 "$site"
docsite() {
  antsibull-docs sphinx-init --use-current --squash-hierarchy --fail-on-error --dest-dir "$site" \
    --project ivshmem.fleet --copyright 'ivshmem.fleet contributors' --title 'ivshmem.fleet documentation' \
    --html-short-title ivshmem.fleet ivshmem.fleet || return 1
  # No network: the Ansible docs' labels that plugin pages link to come from a local inventory.
  python - "$site/ansible_devel.inv" <<'PY'
import sys, zlib
labels = {
    'action_plugins': ('plugins/action.html#$', 'Action plugins'),
    'ansible_configuration_settings': ('reference_appendices/config.html#$', 'Ansible Configuration Settings'),
    'common_return_values': ('reference_appendices/common_return_values.html#$', 'Return Values'),
    'module_defaults': ('playbook_guide/playbooks_module_defaults.html#$', 'Module defaults'),
}
body = ''.join('%s std:label -1 %s %s\n' % (name, uri, title) for name, (uri, title) in sorted(labels.items()))
with open(sys.argv[1], 'wb') as handle:
    handle.write(b'# Sphinx inventory version 2\n# Project: Ansible\n# Version: devel\n'
                 b'# The remainder of this file is compressed using zlib.\n' + zlib.compress(body.encode()))
PY
  [ $? = 0 ] || return 1
  cat >>"$site/conf.py" <<'CONF'

# Written by scripts/check-publishing.sh: no inventories fetched from the network.
import os.path
intersphinx_mapping = {
    'ansible_devel': ('https://docs.ansible.com/projects/ansible/devel/',
                      (os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ansible_devel.inv'),)),
}
CONF
  mkdir -p "$site/rst" && chmod og-w "$site/rst" || return 1
  (cd "$site" && antsibull-docs --config-file antsibull-docs.cfg collection --cleanup everything --use-current \
    --squash-hierarchy --fail-on-error --dest-dir rst ivshmem.fleet) || return 1
  # Extra docs are copied as .rst only: their pictures go beside them.
  if [ -d "$here/docs/docsite/images" ]; then
    mkdir -p "$site/rst/docsite/images" && cp "$here"/docs/docsite/images/* "$site/rst/docsite/images/" || return 1
  fi
  (cd "$site" && sphinx-build -q -b html -c . -W --keep-going -j 1 rst build/html)
}
if ! docsite >"$out/docsite.log" 2>&1; then
  cat "$out/docsite.log" >&2
  fail docsite "the docsite build failed or warned"
else
  echo "   $site/build/html/index.html"
fi

step "waiting for galaxy-importer"
wait "$importer" || true
rc=$(cat "$out/galaxy-importer.rc" 2>/dev/null || echo 1)
problems=$(grep -E '^(WARNING|ERROR|CRITICAL):' "$out/galaxy-importer.log" || true)
if [ "$rc" != 0 ] || [ -n "$problems" ] || ! grep -q '^Importer processing completed successfully' "$out/galaxy-importer.log"; then
  grep -v '^Loading ' "$out/galaxy-importer.log" >&2 || true
  fail galaxy-importer "galaxy-importer failed or warned (exit $rc)"
fi

step "done"
if [ ${#failed[@]} -gt 0 ]; then
  echo "check-publishing: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "check-publishing: the tarball imports with no error or warning, the docs lint is clean, the docsite builds"
