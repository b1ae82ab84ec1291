#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: server
short_description: Manage an ivshmem server on a hypervisor host
version_added: 1.0.0
description:
  - Installs, starts, stops or removes a named ivshmem server that serves one shared memory and
    the doorbells of the QEMU guests (C(ivshmem-doorbell)) that attach to it.
  - The default implementation C(builtin) is the collection's own server, Python standard library
    only. It never refuses or drops a client that reads its socket (a per-client queue holds what the
    socket cannot take yet), serves as many clients as its fd limit allows, gives never-used IDs
    before reusing one, pins IDs to guest names, holds admission for migration destinations,
    answers status queries, and supports memory above 1 GiB and stale-socket recovery.
  - Implementation C(qemu) runs QEMU's upstream C(ivshmem-server) binary instead.
  - Supervised by a systemd unit (C(ivshmem-fleet-server-NAME.service)) where systemd runs,
    otherwise as a daemon with a pidfile.
  - A restarted server strands the guests attached to it (they cannot reconnect), so settings that
    differ from the running server are shown in the diff but applied only with O(restart_on_drift)
    or O(state=restarted). The admission hold is applied live.
author:
  - ivshmem.fleet contributors (@ivshmem-fleet)
extends_documentation_fragment:
  - ivshmem.fleet._common
  - ivshmem.fleet._common.attributes
options:
  name:
    description: Name of the server; guests refer to it by this name.
    type: str
    required: true
  state:
    description:
      - V(started) starts the server if it is not running; V(restarted) always restarts it;
        V(stopped) stops it and keeps its settings; V(absent) stops it and removes its unit,
        runtime files and memory file.
    type: str
    choices: [started, stopped, restarted, absent]
    default: started
  implementation:
    description: V(builtin) is the collection's server; V(qemu) runs the upstream binary at O(binary).
    type: str
    choices: [builtin, qemu]
    default: builtin
  binary:
    description: Path of the upstream C(ivshmem-server) binary; required with O(implementation=qemu).
    type: path
  size:
    description:
      - Size of the shared memory, in bytes or with a K, M, G or T suffix. A power of two (the PCI BAR
        must be one), at least 4K. The upstream server cannot serve more than 1G.
    type: str
    default: 4M
  vectors:
    description: Number of interrupt vectors (doorbells) per guest, 1 to 64.
    type: int
    default: 1
  shm_name:
    description:
      - Name of the shared memory. Without O(memory_dir) it is the POSIX shared memory
        C(/dev/shm/NAME). Defaults to C(ivshmem-fleet-<name>).
    type: str
  hugepages:
    description:
      - The memory on huge pages of this size, from the host's pool (O(ivshmem.fleet.host#module:hugepages)
        reserves it); O(size) must be whole pages of it. Every page is taken when the server starts.
      - Without O(memory_dir) the memory lives on the fleet's own hugetlbfs, C(<runtime_dir>/hugepages-2M),
        mounted when missing (root's, mode 1770, the service group's); a O(memory_dir) given must
        be a hugetlbfs of this page size already.
    type: str
    choices: [2M, 1G]
  memory_dir:
    description:
      - Directory for the memory file instead of C(/dev/shm), for example a hugetlbfs mount.
      - With the builtin server the file is C(<memory_dir>/<shm_name>); the upstream server creates an
        anonymous file there, which the host cannot checksum.
    type: path
  pins:
    description:
      - Guest name to ID; a pinned guest always gets its ID whatever the connection order (builtin only).
      - The server knows a guest by the account its QEMU runs as (SO_PEERCRED), never by the name
        it gives itself, so a process cannot take a pinned ID by calling itself so. Pinned guests
        are the only ones admitted, as with O(admit).
    type: dict
  admit:
    description:
      - The guests admitted, by name. Only their accounts may join, whatever a process calls
        itself (builtin only). With O(pins) the pinned guests are admitted too, and nobody else.
      - Besides these, a builtin server admits each guest that M(ivshmem.fleet.guest) starts
        against it by name (O(ivshmem.fleet.guest#module:ivshmem[].server)); root tells the server
        that guest's account first. Any other process is refused, members of O(group) included,
        unless O(admit_any=true).
    type: list
    elements: str
  admit_any:
    description:
      - Admit every process that can open the socket (members of O(group)), as QEMU's own server
        does. Off by default, since a member of the group could otherwise map the group's memory.
      - The upstream server (O(implementation=qemu)) always admits so.
    type: bool
    default: false
  accounts:
    description:
      - Guest name to the account it runs as, for a guest whose
        O(ivshmem.fleet.guest#module:user) is not its own default (C(ivg-NAME)). Each guest needs
        its own account; an account missing on the host is created in group C(ivshmem).
    type: dict
  admission:
    description:
      - V(held) admits only the guest named in O(hold_for) and refuses every other client, so no peer
        attaches to a migration destination before its master; V(open) admits everyone (builtin only).
    type: str
    choices: [open, held]
    default: open
  hold_for:
    description: The master guest admitted while O(admission=held), known by its account as in O(pins).
    type: str
  max_clients:
    description:
      - Maximum number of connected clients (builtin only).
      - By default as many as the server's fd limit allows (it raises its soft limit to the hard one
        at start; each client costs one socket and one eventfd per vector). The server reports the
        limit and the resulting cap as C(fd_limit) and C(max_clients) in its status.
    type: int
  socket_mode:
    description:
      - Mode of the server socket; guests connect as O(group).
      - A quoted octal string (V('0660')), or a number that can only be the mode itself. A number whose
        digits are all octal is ambiguous and refused with the fix - an unquoted V(444) is the number 444
        (mode 0674), and YAML reads an unquoted V(0660) as 432 - and so is anything above V('0777'),
        such as an unquoted V(660). Quote modes.
    type: raw
    default: '0660'
  memory_mode:
    description:
      - Mode of the memory file (guests get the memory through the socket, not the file).
      - Given as O(socket_mode) is.
    type: raw
    default: '0600'
  user:
    description:
      - Account the server runs as and that owns its memory and sockets (created when missing).
      - By default its own, C(ivs-NAME) (a readable part of NAME and a hash when NAME is long or
        not lower case), so no other server or guest can open its memory.
    type: str
  group:
    description:
      - Group of the socket (guests connect through it); C(ivshmem) by default, every guest's
        group; O(user) when O(user) is given.
    type: str
  supervisor:
    description: V(auto) uses systemd where it runs as PID 1, else a daemon with a pidfile.
    type: str
    choices: [auto, systemd, daemon]
    default: auto
  program_dir:
    description: Where the builtin server program is installed.
    type: path
    default: /usr/local/lib/ivshmem-fleet
  restart_on_drift:
    description: Restart a running server whose settings differ from the asked ones (strands its guests).
    type: bool
    default: false
  timeout:
    description: Seconds to wait for the server to start listening or to stop.
    type: int
    default: 30
seealso:
  - module: ivshmem.fleet.guest
  - module: ivshmem.fleet.migrate
'''

EXAMPLES = r'''
- name: A server for a shared-memory group, IDs pinned to guest names
  ivshmem.fleet.server:
    name: group1
    size: 64M
    vectors: 2
    pins:
      db-master: 0
      db-reader: 1

- name: A fresh server on a migration destination, holding admission for the master
  ivshmem.fleet.server:
    name: group1
    size: 64M
    vectors: 2
    admission: held
    hold_for: db-master

- name: Release the hold once the master has migrated
  ivshmem.fleet.server:
    name: group1
    size: 64M
    vectors: 2
    admission: open

- name: QEMU's upstream server instead of the builtin one
  ivshmem.fleet.server:
    name: legacy
    implementation: qemu
    binary: /usr/local/bin/ivshmem-server
    size: 4M

- name: Remove a server and its memory
  ivshmem.fleet.server:
    name: group1
    state: absent
'''

RETURN = r'''
server:
  description: The server after the task.
  returned: always
  type: dict
  contains:
    name:
      description: Server name.
      type: str
      sample: group1
    state:
      description: V(started), V(stopped) or V(absent).
      type: str
      sample: started
    pid:
      description: Process ID of the server, null when not running.
      type: int
      sample: 4242
    socket:
      description: The UNIX socket guests connect to.
      type: str
      sample: /run/ivshmem-fleet/servers/group1/ivshmem.sock
    control:
      description: The builtin server's control socket (status, hold, release).
      type: str
      sample: /run/ivshmem-fleet/servers/group1/control.sock
    memory:
      description: The memory file on the host, null where the host cannot see it.
      type: str
      sample: /dev/shm/ivshmem-fleet-group1
    hold:
      description: The master admission is held for, or null.
      type: str
      sample: db-master
    clients:
      description: Connected clients with ID, pid, guest name and connect time (builtin only; null for qemu).
      type: list
      elements: dict
      sample: [{"id": 0, "name": "db-master", "pid": 5150, "uid": 998, "connected_at": 1795685539.6}]
    supervisor:
      description: V(systemd) or V(daemon).
      type: str
      sample: daemon
    implementation:
      description: V(builtin) or V(qemu).
      type: str
      sample: builtin
    size:
      description: Memory size in bytes.
      type: int
      sample: 67108864
    vectors:
      description: Interrupt vectors per guest.
      type: int
      sample: 2
waited:
  description: Seconds spent waiting for the server to start or stop.
  returned: when the server was started or stopped
  type: float
  sample: 0.12
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ivshmem.fleet.plugins.module_utils._module import run_manager
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import COMMON_ARGS, SERVER_ARGS
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import ServerManager


def main():
    module = AnsibleModule(
        argument_spec=dict(COMMON_ARGS, **SERVER_ARGS),
        required_if=[('implementation', 'qemu', ['binary'])],
        supports_check_mode=True,
    )
    run_manager(module, ServerManager, module.params['state'])


if __name__ == '__main__':
    main()
