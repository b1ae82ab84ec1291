#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: host
short_description: Converge a hypervisor's ivshmem servers and guests in one call, master first
version_added: 1.0.0
description:
  - "Takes the servers and guests a host should run and converges them in one module run: the
    service account and the runtime directory, then every server and region, then every guest with a master
    device, then the other guests. One SSH round trip and one Python start on the host, however
    many groups it serves."
  - Each item takes the options of M(ivshmem.fleet.server) or M(ivshmem.fleet.guest) and is
    validated the same way, all before anything changes; an error names the item and the option
    (for example C(guests[2].memory)).
  - "Gates: a master's ID on a builtin server must be 0, and a peer's the ID its server pins for
    it; when a gate fails, the guests after it are not started and the error says which."
  - Servers and guests not listed are left as they are.
author:
  - ivshmem.fleet contributors (@ivshmem-fleet)
extends_documentation_fragment:
  - ivshmem.fleet._common
  - ivshmem.fleet._host_overrides
  - ivshmem.fleet._common.attributes
options:
  servers:
    description: The servers, each with the options of M(ivshmem.fleet.server) (its O(ivshmem.fleet.server#module:state) too).
    type: list
    elements: dict
    default: []
  regions:
    description:
      - The shared memories of plain groups, each with the options of M(ivshmem.fleet.region) (its
        O(ivshmem.fleet.region#module:state) too). Made after the servers and before any guest.
    type: list
    elements: dict
    default: []
  guests:
    description:
      - The guests, each with the options of M(ivshmem.fleet.guest). Those with a V(master)
        device start before the others, whatever the order here.
    type: list
    elements: dict
    default: []
  hugepages:
    description:
      - The host's huge page pools, page size (V(2M), V(1G)) to pages, grown to at least that many
        before anything starts; a pool that is larger stays so (pages in use are never taken back).
      - A kernel that gives fewer pages fails the task, naming the page size and the shortfall.
        1 GiB pages are seldom free after boot; reserve them on the kernel command line.
      - The pool is the kernel's, not kept across a reboot; the C(ivshmem.fleet.hypervisor) role sizes it from
        the groups a host serves.
    type: dict
    default: {}
  hugepages_spare:
    description:
      - Pages kept beyond O(hugepages), page size to pages, for groups that may move in; the pools grow
        to at least the sum of both.
    type: dict
    default: {}
  user:
    description:
      - One account for every server and guest that does not name its own
        O(ivshmem.fleet.server#module:user) or O(ivshmem.fleet.guest#module:user) (created when missing).
      - By default each runs under its own account (C(ivs-NAME), C(ivg-NAME)), which is how a
        server tells its guests apart; guests that share an account cannot be pinned or admitted
        by a server, and the task says so.
    type: str
  group:
    description:
      - The service group (created when missing). Every server and guest runs in it, and it
        reads the migration credentials. By default C(ivshmem), or O(user) when that is given.
    type: str
notes:
  - The diff shows, per server and guest, what changes, as the per-item modules show it.
seealso:
  - module: ivshmem.fleet.server
  - module: ivshmem.fleet.region
  - module: ivshmem.fleet.guest
  - module: ivshmem.fleet.plan
'''

EXAMPLES = r'''
- name: Everything this host serves, in one call
  ivshmem.fleet.host:
    servers:
      - {name: group1, size: 64M, vectors: 2, pins: {db-master: 0, db-reader: 1}}
    guests:
      - {name: db-master, memory: 512M, ivshmem: [{server: group1, role: master, vectors: 2}]}
      - {name: db-reader, memory: 256M, ivshmem: [{server: group1, role: peer, vectors: 2}]}
'''

RETURN = r'''
qemu_binary:
  description:
    - The default QEMU of guests (C(/usr/bin/qemu-system-x86_64)) when it is installed, else null.
    - The C(ivshmem.fleet.hypervisor) role installs QEMU where this is null.
  returned: always
  type: str
  sample: /usr/bin/qemu-system-x86_64
qemu:
  description:
    - What the default QEMU of guests is, when it is installed, else null - its C(version), the
      distribution C(package) version and the C(default_machine) (the versioned type C(pc) means there).
    - The C(ivshmem.fleet.hypervisor) role reports it before and after it upgrades QEMU.
  returned: always
  type: dict
  sample: {"binary": "/usr/bin/qemu-system-x86_64", "version": "7.2.22", "package": "Debian 1:7.2+dfsg-7+deb12u18+b3",
           "default_machine": "pc-i440fx-7.2"}
hugepages:
  description:
    - The kernel's huge page pools after the call, by page size, in pages (C(available) is free less
      reserved), with the pages asked (null where none was).
  returned: always
  type: dict
  sample: {"2M": {"page_size": 2097152, "total": 64, "free": 48, "reserved": 0, "surplus": 0, "available": 48, "asked": 64}}
regions:
  description: Each region after the call, by name, as M(ivshmem.fleet.region) returns it.
  returned: always
  type: dict
  sample: {"lg": {"state": "present", "path": "/dev/shm/ivshmem-fleet-lg", "group": "ivm-lg", "mode": "0660"}}
servers:
  description: Each server after the call, by name, as M(ivshmem.fleet.server) returns it.
  returned: always
  type: dict
  sample: {"group1": {"state": "started", "pid": 4242}}
guests:
  description: Each guest after the call, by name, as M(ivshmem.fleet.guest) returns it.
  returned: always
  type: dict
  sample: {"db-master": {"state": "running", "ivshmem": [{"id": "ivshmem0", "server_id": 0}]}}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ivshmem.fleet.plugins.module_utils._host_converge import HostConverger
from ansible_collections.ivshmem.fleet.plugins.module_utils._module import run_manager
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import COMMON_ARGS, HOST_ARGS


def main():
    module = AnsibleModule(
        argument_spec=dict(COMMON_ARGS, **HOST_ARGS),
        supports_check_mode=True,
    )
    run_manager(module, HostConverger, 'present')


if __name__ == '__main__':
    main()
