#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: info
short_description: Gather the ivshmem servers, guests, IDs, roles and migration state of a host
version_added: 1.0.0
description:
  - Reads every server and guest the collection manages under O(runtime_dir) and returns them as
    the fact C(ivshmem_fleet), with the groups whose move is in transition on this host.
  - Also reports the host's total and available memory (C(host_memory), from C(/proc/meminfo)), which
    M(ivshmem.fleet.plan) uses to place groups during a rollout.
  - Guests are asked over QMP for their run state, migration state and blockers, and each ivshmem
    device's role and IVPOSITION; builtin servers are asked for their clients and admission hold.
author:
  - ivshmem.fleet contributors (@ivshmem-fleet)
extends_documentation_fragment:
  - ivshmem.fleet._common
attributes:
  check_mode:
    support: full
    description: Only reads.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
  facts:
    support: full
    description: Returns the C(ivshmem_fleet) fact.
  idempotent:
    support: full
    description: Never changes anything.
  platform:
    support: full
    platforms: posix
    description: Target OS/families that can be operated against.
options: {}
seealso:
  - module: ivshmem.fleet.server
  - module: ivshmem.fleet.guest
'''

EXAMPLES = r'''
- name: What runs here
  ivshmem.fleet.info:

- name: Master IDs
  ansible.builtin.debug:
    msg: "{{ ansible_facts.ivshmem_fleet.guests | dict2items | map(attribute='value.ivshmem') | list }}"
'''

RETURN = r'''
ansible_facts:
  description: Facts about this host.
  returned: always
  type: dict
  contains:
    ivshmem_fleet:
      description: Servers and guests by name.
      type: dict
      contains:
        runtime_dir:
          description: The runtime directory read.
          type: str
          sample: /run/ivshmem-fleet
        servers:
          description: Each server with state, pid, socket, memory, hold and clients (see M(ivshmem.fleet.server)).
          type: dict
          sample: {"group1": {"state": "started", "pid": 4242, "clients": [{"id": 0, "name": "db-master"}]}}
        regions:
          description:
            - Each plain group's region with state (V(present), or V(missing) when its file is gone),
              C(memory) (the file), C(group), C(mode), C(size) and C(members) (see M(ivshmem.fleet.region)).
          type: dict
          sample: {"lg": {"state": "present", "memory": "/dev/shm/ivshmem-fleet-lg", "group": "ivm-lg", "mode": "0660"}}
        guests:
          description:
            - Each guest with state, run state, pid, ivshmem devices (role, IVPOSITION), migration state and
              C(machine_type), the versioned machine type its QEMU resolved (see M(ivshmem.fleet.guest)).
          type: dict
          sample: {"db-master": {"state": "running", "machine_type": "pc-i440fx-7.2",
                                 "ivshmem": [{"id": "ivshmem0", "role": "master", "ivposition": 0}]}}
        moves:
          description:
            - Groups in transition on this host, by group name. A move of M(ivshmem.fleet.group_migrate) that
              did not finish, with the journal step it reached here, the run and controller process holding
              its lock, and the steps so far. Running the same move again resolves it.
          type: dict
          sample: {"g1": {"step": "sent", "role": "source", "source": "hv1", "destination": "hv2", "run_id": "3f2a9c0d11aa"}}
        host_memory:
          description:
            - The host's memory in bytes, from C(/proc/meminfo) - C(total) (MemTotal) and C(available) (MemAvailable,
              what the kernel estimates new processes can take without swapping). V(null) where the kernel does not
              report both.
          type: dict
          sample: {"total": 1027772416, "available": 812384256}
        hugepages:
          description:
            - The kernel's huge page pools by page size (V(2M), V(1G)), in pages, from C(/sys/kernel/mm/hugepages)
              - C(total), C(free), C(reserved) (promised to a mapping, not yet touched), C(surplus) and C(available)
              (free less reserved, what new memory can take). M(ivshmem.fleet.plan) places a group on huge pages only
              where they are available. Empty where the kernel has none.
          type: dict
          sample: {"2M": {"page_size": 2097152, "total": 64, "free": 48, "reserved": 0, "surplus": 0, "available": 48}}
        qemu:
          description:
            - The guests' default QEMU (C(/usr/bin/qemu-system-x86_64)) - its C(version), distribution C(package)
              version and C(default_machine) (the versioned type C(pc) means here); null where it is not installed.
          type: dict
          sample: {"binary": "/usr/bin/qemu-system-x86_64", "version": "10.0.2", "default_machine": "pc-i440fx-10.0"}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ivshmem.fleet.plugins.module_utils._info import HostInfo
from ansible_collections.ivshmem.fleet.plugins.module_utils._module import run_manager
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import COMMON_ARGS


def main():
    module = AnsibleModule(argument_spec=dict(COMMON_ARGS), supports_check_mode=True)
    run_manager(module, HostInfo, 'gathered')


if __name__ == '__main__':
    main()
