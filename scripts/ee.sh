#!/usr/bin/env bash
# The collection in a real execution environment, as AWX and Ansible Automation Platform run it
# (issue 29): built with ansible-builder and podman, playbooks run in it through ansible-runner.
#
#   scripts/ee.sh build
#       Makes the base image (Debian 12 from debootstrap, imported into podman: no registry is
#       reachable here), then `ansible-builder build` of tests/ee/execution-environment.yml with
#       the collection's tarball inside. Cached: rebuilt only when the collection or the
#       definition changes. Prints the image's ansible-core and the collection it carries.
#   scripts/ee.sh run INVENTORY PLAYBOOK [ansible-playbook arguments...]
#       Runs a playbook (a collection playbook such as ivshmem.fleet.migrate) inside the image
#       with `ansible-runner run --process-isolation`, against INVENTORY (a file or a directory,
#       copied in; the SSH key it names handed in as AWX hands a machine credential). Exits with
#       the playbook's rc.
#
# Root on Debian 12, after scripts/bootstrap.sh (podman, runc, debootstrap, ansible-builder and
# ansible-runner in the venv).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache="${IVSHMEM_FLEET_CACHE:-$here/.cache}"
[ -d "$cache/venv/bin" ] && PATH="$cache/venv/bin:$PATH"
export PATH
work="$cache/ee"
base_image=localhost/ivshmem-fleet-ee-base:bookworm
image=localhost/ivshmem-fleet-ee:latest

# podman on these machines: runc (crun refuses hybrid cgroups) and no default ulimits (setting
# nofile and nproc is refused in this VM).
podman_config() {
  local conf=/etc/containers/containers.conf.d/50-ivshmem-fleet.conf
  [ -f "$conf" ] && return
  mkdir -p "$(dirname "$conf")"
  printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n' > "$conf"
}

base() {
  local recipe rootfs
  recipe=$(declare -f base | cat - "$here/tests/ee/apt-pkgmgr" /etc/ssl/certs/ca-certificates.crt | sha256sum | cut -c1-12)
  if podman image exists "$base_image" && [ "$(podman image inspect -f '{{index .Labels "recipe"}}' "$base_image" 2>/dev/null)" = "$recipe" ]; then
    echo "ee: base image cached ($base_image, recipe $recipe)"; return
  fi
  rootfs="$work/base-rootfs"
  rm -rf "$rootfs"; mkdir -p "$rootfs" "$cache/lab/debcache"
  echo "ee: debootstrap of the base image"
  nice -n 5 debootstrap --variant=minbase --cache-dir="$cache/lab/debcache" \
    --include=python3,python3-pip,openssh-client,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 || {
      tail -20 "$work/debootstrap.log"; exit 1; }
  # ansible-builder installs with pip into the image's Python, which Debian marks as managed by
  # apt (PEP 668): in an image of its own that is what we want.
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  install -m 755 "$here/tests/ee/apt-pkgmgr" "$rootfs/usr/local/bin/apt-pkgmgr"
  # The image trusts what this machine trusts: its package registries may be reached through a
  # proxy with a CA of its own, which the build's pip must accept too.
  install -m 644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  chroot "$rootfs" apt-get clean
  tar -C "$rootfs" -c . | podman import --change "LABEL recipe=$recipe" --change 'CMD ["/bin/bash"]' - "$base_image" >/dev/null
  rm -rf "$rootfs"
  echo "ee: base image $base_image imported"
}

build() {
  podman_config
  mkdir -p "$work"
  base
  # The definition and the collection's tarball, staged where the definition names it.
  local def="$work/definition" recipe
  rm -rf "$def"; mkdir -p "$def/collection"
  cp "$here/tests/ee/execution-environment.yml" "$def/"
  ansible-galaxy collection build --force --output-path "$def/collection" "$here" >/dev/null
  mv "$def"/collection/ivshmem-fleet-*.tar.gz "$def/collection/ivshmem-fleet.tar.gz"
  # A tarball's bytes change with its build time: the recipe is the files in it.
  recipe=$( (tar xzOf "$def/collection/ivshmem-fleet.tar.gz" | sha256sum; cat "$def/execution-environment.yml"; podman image inspect -f '{{.Id}}' "$base_image") | sha256sum | cut -c1-12)
  if podman image exists "$image" && [ "$(podman image inspect -f '{{index .Labels "recipe"}}' "$image" 2>/dev/null)" = "$recipe" ]; then
    echo "ee: image cached ($image, recipe $recipe)"
  else
    echo "ee: ansible-builder build"
    # --network=host: the build reaches PyPI the way this machine does.
    ansible-builder build --file "$def/execution-environment.yml" --context "$work/context" \
      --container-runtime podman --tag "$image" \
      --extra-build-cli-args "--network=host --label recipe=$recipe" -v 1 >"$work/build.log" 2>&1 || {
        tail -40 "$work/build.log"; exit 1; }
  fi
  podman run --rm --network=none "$image" ansible --version | head -1
  podman run --rm --network=none "$image" ansible-galaxy collection list ivshmem.fleet 2>/dev/null | grep -E '^(#|ivshmem)'
}

run() {
  [ $# -ge 2 ] || { echo "usage: scripts/ee.sh run INVENTORY PLAYBOOK [ansible-playbook arguments...]" >&2; exit 2; }
  local inventory=$1 playbook=$2; shift 2
  podman image exists "$image" || { echo "ee: no image; run scripts/ee.sh build first" >&2; exit 2; }
  local private key
  private=$(mktemp -d "$work/run.XXXXXX")
  mkdir -p "$private/project" "$private/inventory"
  if [ -d "$inventory" ]; then cp -rL "$inventory"/. "$private/inventory/"; else cp "$inventory" "$private/inventory/"; fi
  # A project as AWX has one: a playbook that runs the collection's.
  printf -- '---\n- name: %s\n  ansible.builtin.import_playbook: %s\n' "$playbook" "$playbook" > "$private/project/main.yml"
  # The SSH key the inventory names reaches the job as AWX hands it a machine credential: in
  # env/ssh_key, which ansible-runner loads into an ssh-agent inside the container.
  key=$(grep -rhoE '(ansible_ssh_private_key_file|ansible_private_key_file)["]?:[[:space:]]*["]?[^"[:space:]]+' "$private/inventory" \
        | sed -E 's/.*:[[:space:]]*"?//' | sort -u | head -1)
  local mounts=()
  if [ -n "$key" ] && [ -f "$key" ]; then
    mkdir -p "$private/env"; install -m 600 "$key" "$private/env/ssh_key"
    # And the key's directory read-only at its own path: an inventory that also says
    # IdentitiesOnly=yes (Molecule's does) offers the agent's key only beside its file.
    mounts=(--container-volume-mount "$(dirname "$key"):$(dirname "$key"):ro")
  fi
  # The lab's hosts are reached on loopback ports: the container shares this machine's network.
  # Rootful podman: the job runs as root in the container, as the files runner makes for it
  # here (the key's pipe, the artifacts) are root's.
  ansible-runner run "$private" --playbook main.yml --process-isolation \
    --process-isolation-executable podman --container-image "$image" \
    --container-option=--network=host --container-option=--user=0 "${mounts[@]}" \
    ${1+--cmdline "$(printf '%q ' "$@")"}
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  *) echo "usage: scripts/ee.sh build | run INVENTORY PLAYBOOK [args...]" >&2; exit 2 ;;
esac
