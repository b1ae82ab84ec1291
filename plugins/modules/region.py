#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: region
short_description: Manage the shared memory of a plain ivshmem group on a hypervisor host
version_added: 1.0.0
description:
  - Makes the file that the guests of a plain group map (C(ivshmem-plain), a C(memory-backend-file)
    shared by a master and its peers), and that named host accounts may read and write. Root owns it;
    its group (C(ivm-NAME) by default, a group of its own) reads and writes it; nobody else opens it.
  - The accounts in O(members) are made the group's only members; an account that does not exist is
    created, in a group of its own. Guests start with the groups their account has, so a guest of the
    region starts after the region is made (M(ivshmem.fleet.host) does regions before guests).
  - QEMU makes the file only when there is none, as its first guest's with mode 0644, which every
    other guest's QEMU then fails to open. So M(ivshmem.fleet.guest) refuses a plain device whose file
    is missing, and this module refuses a file that root did not make (a name taken first) or whose
    size differs (it would hold the group's memory).
author:
  - ivshmem.fleet contributors (@ivshmem-fleet)
extends_documentation_fragment:
  - ivshmem.fleet._common
  - ivshmem.fleet._common.attributes
options:
  name:
    description: Name of the region (a plain group's name).
    type: str
    required: true
  state:
    description: V(present) makes it as asked; V(absent) removes the file, root's record and the region's own group.
    type: str
    choices: [present, absent]
    default: present
  size:
    description: Size of the memory, a power of two (C(4M), C(64M), C(1G)).
    type: str
    default: 4M
  shm_name:
    description: File name in O(memory_dir); C(ivshmem-fleet-NAME) by default.
    type: str
  memory_dir:
    description:
      - Directory of the file; C(/dev/shm) by default, and the fleet's own hugetlbfs with O(hugepages).
      - With O(hugepages), a directory given must be a hugetlbfs of that page size already.
    type: path
  hugepages:
    description:
      - The memory on huge pages of this size, from the host's pool (O(ivshmem.fleet.host#module:hugepages)
        reserves it); O(size) must be whole pages of it. Every page is taken when the file is made.
      - Without O(memory_dir) the file lives on the fleet's own hugetlbfs, C(<runtime_dir>/hugepages-2M),
        mounted when missing.
    type: str
    choices: [2M, 1G]
  group:
    description:
      - The group that reads and writes the memory; C(ivm-NAME) by default (created when missing).
      - Never the service group or a privileged one, whose members are not the region's.
    type: str
  mode:
    description:
      - The file's mode, quoted. The group reads and writes it (QEMU opens it read-write); other
        accounts get nothing.
    type: raw
    default: '0660'
  members:
    description: Accounts that read and write the memory (the group's guests' accounts and host accounts).
    type: list
    elements: str
    default: []
seealso:
  - module: ivshmem.fleet.guest
  - module: ivshmem.fleet.host
'''

EXAMPLES = r'''
- name: The shared memory of a plain group of two guests and a host reader
  ivshmem.fleet.region:
    name: lg
    size: 64M
    members: [ivg-win10, ivg-win10-peer, looking-glass]

- name: Its guests map it
  ivshmem.fleet.guest:
    name: win10
    memory: 4G
    ivshmem: [{type: plain, memory_path: /dev/shm/ivshmem-fleet-lg, size: 64M, role: master}]
'''

RETURN = r'''
region:
  description: The region after the task.
  returned: always
  type: dict
  contains:
    state:
      description: V(present), V(missing) (root's record, but no file) or V(absent).
      type: str
    path:
      description: The file.
      type: str
      sample: /dev/shm/ivshmem-fleet-lg
    group:
      description: The file's group.
      type: str
      sample: ivm-lg
    mode:
      description: The file's mode.
      type: str
      sample: '0660'
    members:
      description: The group's members.
      type: list
      elements: str
      sample: [ivg-win10, looking-glass]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ivshmem.fleet.plugins.module_utils._module import run_manager
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import COMMON_ARGS, REGION_ARGS
from ansible_collections.ivshmem.fleet.plugins.module_utils._region import RegionManager


def main():
    module = AnsibleModule(
        argument_spec=dict(COMMON_ARGS, **REGION_ARGS),
        supports_check_mode=True,
    )
    run_manager(module, RegionManager, module.params['state'])


if __name__ == '__main__':
    main()
