#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: guest
short_description: Manage a QEMU guest with ivshmem devices on a hypervisor host
version_added: 1.0.0
description:
  - Runs a named QEMU guest as an unprivileged user with QEMU's sandbox on, with a QMP socket per guest.
  - Readiness means QMP answers a command, which QEMU does only once every ivshmem device has
    finished its handshake with its server (a stalled server makes the start time out, and the
    half-started QEMU is killed).
  - V(incoming) starts the guest as a migration destination (C(-incoming defer) and paused with
    C(-S)) and makes it listen on O(incoming_uri); M(ivshmem.fleet.migrate) then moves a master into it.
  - Settings that differ from the running guest show in the diff; the guest is restarted for
    them only with O(restart_on_drift).
  - Only one master per shared memory. A second master on the same server or memory file on this
    host is refused before anything starts.
author:
  - ivshmem.fleet contributors (@ivshmem-fleet)
extends_documentation_fragment:
  - ivshmem.fleet._common
  - ivshmem.fleet._common.attributes
options:
  name:
    description: Guest name (QEMU C(-name)); servers pin IDs by it.
    type: str
    required: true
  state:
    description:
      - V(running) starts the guest, or resumes it when paused.
      - V(paused) stops its CPUs over QMP (memory and devices stay).
      - V(incoming) starts it as a paused migration destination.
      - V(stopped) quits QEMU and keeps the recorded settings; V(absent) also removes them.
    type: str
    choices: [running, paused, incoming, stopped, absent]
    default: running
  binary:
    description:
      - The QEMU system emulator. What it offers (version, machine types, ivshmem devices) is learned once per
        binary file (run as C(nobody)) and kept under O(runtime_dir); a guest that needs what it lacks is refused
        before anything starts.
    type: path
    default: /usr/bin/qemu-system-x86_64
  memory:
    description: Guest RAM, in MiB or with a suffix (V(256M), V(2G)).
    type: str
    default: 128M
  cpus:
    description: Number of virtual CPUs.
    type: int
    default: 1
  cpu:
    description:
      - QEMU CPU model (C(-cpu)), with options (V(Haswell-v4,-hle)); QEMU's default when unset.
      - A guest that moves needs a model every host of the fleet can run; V(host) and V(max) are
        not migratable between different CPUs.
    type: str
  hugepages:
    description:
      - The guest's RAM on huge pages of this size, from the host's pool (O(ivshmem.fleet.host#module:hugepages)
        reserves it), all taken at start (a pool that is short fails the start, not the guest later).
      - O(memory) must be whole pages of it. The RAM block keeps its name (C(pc.ram)), so the guest
        moves to hosts and QEMU versions with or without huge pages alike.
      - Unset, the RAM is ordinary memory.
    type: str
    choices: [2M, 1G]
  machine:
    description:
      - QEMU machine type, a versioned type (V(pc-i440fx-7.2)) or an alias (V(pc), V(q35)), with options
        after a comma.
      - An alias resolves to the newest type of the QEMU that starts the guest (V(pc) is V(pc-i440fx-7.2) on
        QEMU 7.2, V(pc-i440fx-10.0) on 10.0), and a migration stream loads only into the type it was sent
        from. The guest records the versioned type it resolved (RV(guest.machine_type)); every later start of
        it runs that type - a restart, a redeploy, a move's destination - so it can move between QEMU versions.
        Asking for the alias or for the type it resolved to is the same (no drift).
      - A machine type the host's QEMU does not offer is refused before anything starts, naming the QEMU
        version and the versioned types it runs.
    type: str
    default: pc
  accel:
    description:
      - V(auto) uses KVM when the guest's user can open C(/dev/kvm) read-write, else TCG.
      - TCG runs with a 64 MiB translation buffer (QEMU 7.2's default is 1 GiB per guest).
    type: str
    choices: [auto, kvm, tcg]
    default: auto
  disks:
    description: Disk images.
    type: list
    elements: dict
    suboptions:
      path:
        description: Image path.
        type: path
        required: true
      format:
        description: Image format.
        type: str
        choices: [qcow2, raw]
        default: qcow2
      interface:
        description: Disk interface.
        type: str
        choices: [virtio, ide, scsi]
        default: virtio
      readonly:
        description: Attach read-only.
        type: bool
        default: false
  kernel:
    description: Kernel image for direct boot.
    type: path
  initrd:
    description: Initial ramdisk for direct boot.
    type: path
  append:
    description: Kernel command line.
    type: str
  extra_devices:
    description: Further C(-device) values, passed as they are.
    type: list
    elements: str
  extra_args:
    description: Further QEMU arguments, passed as they are (no shell).
    type: list
    elements: str
  ivshmem:
    description: The guest's ivshmem devices, in order (C(ivshmem0), C(ivshmem1), ...).
    type: list
    elements: dict
    suboptions:
      type:
        description: V(doorbell) uses a server's memory and doorbells; V(plain) maps a memory file, no server.
        type: str
        choices: [doorbell, plain]
        default: doorbell
      server:
        description: Name of an M(ivshmem.fleet.server) on this host (doorbell).
        type: str
      socket:
        description: Socket path of any other ivshmem server (doorbell), instead of O(ivshmem[].server).
        type: path
      memory_path:
        description: The memory file (plain); created by QEMU when missing.
        type: path
      size:
        description: Memory size (plain), a power of two.
        type: str
      role:
        description:
          - V(master) is the one device per shared memory that may migrate (and must get ID 0);
            V(peer) devices block migration.
        type: str
        choices: [master, peer]
        default: peer
      vectors:
        description: Interrupt vectors (doorbell), 1 to 64; 1 when not given.
        type: int
      hotplug:
        description:
          - Place the device where PCI hotplug works (pc - a fixed slot on the root bus; q35 - a root
            port of its own; other machines are refused), so it can be unplugged and plugged back
            while the guest runs (a plain device with its memory backend, a doorbell device with its
            connection to the server). A group with C(peer_mode=live) sets it on its peers. It changes
            the guest's PCI layout, so switching it on a running guest needs a restart.
        type: bool
        default: false
  user:
    description:
      - Unprivileged account QEMU runs as (created when missing).
      - By default the guest's own, C(ivg-NAME) (a readable part of NAME and a hash when NAME is
        long or not lower case). Servers know their guests by this account, so each guest needs its
        own. Give another one to the server too (its O(ivshmem.fleet.server#module:accounts)).
    type: str
  group:
    description:
      - Group QEMU runs as; C(ivshmem) by default (it opens the servers' sockets and reads the
        migration credentials), O(user) when O(user) is given.
    type: str
  sandbox:
    description: Run QEMU with C(-sandbox on) and every optional restriction.
    type: bool
    default: true
  incoming_uri:
    description:
      - Where an V(incoming) guest listens for the migration stream; defaults to a UNIX socket in its runtime directory.
      - A network (C(tcp:)) URI is refused here - it would take a stream in clear from whoever connects first -
        and one on every interface (C(0.0.0.0), C([::])) everywhere. Between hosts, move groups with
        M(ivshmem.fleet.group_migrate), which starts the destination itself on the one address it is given and
        admits only the source over TLS.
    type: str
  restart_on_drift:
    description: Restart a running guest whose settings differ from the asked ones.
    type: bool
    default: false
  timeout:
    description: Seconds to wait for QEMU to answer QMP after starting, or to exit when stopping.
    type: int
    default: 60
seealso:
  - module: ivshmem.fleet.server
  - module: ivshmem.fleet.migrate
'''

EXAMPLES = r'''
- name: The master of a shared-memory group
  ivshmem.fleet.guest:
    name: db-master
    memory: 512M
    ivshmem:
      - server: group1
        role: master
        vectors: 2

- name: A peer, booting a kernel
  ivshmem.fleet.guest:
    name: db-reader
    memory: 256M
    kernel: /var/lib/images/vmlinuz
    initrd: /var/lib/images/initrd.img
    append: console=ttyS0
    ivshmem:
      - server: group1
        role: peer
        vectors: 2

- name: A migration destination for the master on this host (ivshmem.fleet.migrate; between hosts,
    ivshmem.fleet.group_migrate starts it, over TLS)
  ivshmem.fleet.guest:
    name: db-master-b
    state: incoming
    ivshmem:
      - server: group1
        role: master
        vectors: 2

- name: Pause a peer before its master migrates
  ivshmem.fleet.guest:
    name: db-reader
    state: paused
    ivshmem:
      - server: group1
        vectors: 2
'''

RETURN = r'''
guest:
  description: The guest after the task.
  returned: always
  type: dict
  contains:
    name:
      description: Guest name.
      type: str
      sample: db-master
    state:
      description: V(running), V(paused), V(incoming), V(migrated), V(stopped) or V(absent).
      type: str
      sample: running
    run_state:
      description: QEMU's own run state (C(query-status)).
      type: str
      sample: running
    pid:
      description: QEMU's process ID, null when not running.
      type: int
      sample: 5150
    qmp:
      description: The guest's QMP socket.
      type: str
      sample: /run/ivshmem-fleet/guests/db-master/qmp.sock
    accel:
      description: The accelerator in use.
      type: str
      sample: tcg
    machine_type:
      description:
        - The versioned machine type QEMU resolved O(machine) to, which every later start of the guest runs.
          Null while not known (a guest stopped before types were recorded).
      type: str
      sample: pc-i440fx-7.2
    incoming_uri:
      description: Where an incoming guest listens.
      type: str
      sample: unix:/run/ivshmem-fleet/guests/db-master-b/incoming.sock
    ivshmem:
      description: Each ivshmem device with its resolved role and IVPOSITION (null while the BARs are unassigned).
      type: list
      elements: dict
      sample: [{"id": "ivshmem0", "type": "doorbell", "server": "group1", "role": "master", "ivposition": 0, "vectors": 2}]
    migration:
      description:
        - QEMU's migration status, what blocks a migration, and C(tls_creds), the TLS credentials its
          migration used (set on a guest that arrived or left over TLS; empty in clear).
      type: dict
      sample: {"status": "none", "blocked_reasons": [], "tls_creds": "ivshmem-fleet-migration-tls"}
waited:
  description: Seconds spent waiting for QEMU to start or stop.
  returned: when the guest was started or stopped
  type: float
  sample: 0.4
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import GuestManager
from ansible_collections.ivshmem.fleet.plugins.module_utils._module import run_manager
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import COMMON_ARGS, GUEST_ARGS


def main():
    module = AnsibleModule(
        argument_spec=dict(COMMON_ARGS, **GUEST_ARGS),
        supports_check_mode=True,
    )
    run_manager(module, GuestManager, module.params['state'])


if __name__ == '__main__':
    main()
