#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: migrate
short_description: Migrate an ivshmem master to a prepared destination, verified before it runs
version_added: 1.0.0
description:
  - Live-migrates a running guest whose ivshmem devices are all masters into a destination guest
    started with M(ivshmem.fleet.guest) V(state=incoming) on its own (fresh) server.
  - "Preflight: the guest is a master (peers cannot migrate: pause or stop them first), QEMU lists
    no migration blocker, the destination waits paused with the same devices."
  - The migration runs with QMP capabilities C(events) and C(pause-before-switchover), and waits
    on QMP C(MIGRATION) events with a timeout. At the switchover gate it checks the destination
    still waits. Bandwidth and downtime limits are set first (QEMU 7.2's default bandwidth cap
    makes a 1 GiB region take 8 s instead of 1.6 s).
  - "Before the destination runs: the source must be paused (C(postmigrate)), the destination
    paused, the destination's IVPOSITION 0, and the shared-memory checksums of both sides equal
    (hashed in parallel chunks). Only then does the destination continue."
  - On any failure it cancels, resumes the source, discards the destination and fails with what happened.
  - During the migration, progress (percent and bytes remaining) is written to
    C(<runtime_dir>/guests/<guest>/migration.json) at every pass.
  - "Both guests are on the host the module runs on: the stream goes over a C(unix:) socket and
    never crosses the network (it is not encrypted). Between hosts, move the whole group with
    M(ivshmem.fleet.group_migrate), which encrypts and authenticates the stream."
  - "The same steps can run in phases (for scripting and fault injection): V(send) migrates to
    O(uri) and returns the paused source's checksums; V(receive) verifies the destination against
    them and continues it; V(abort) resumes a paused source whose destination failed."
author:
  - ivshmem.fleet contributors (@ivshmem-fleet)
extends_documentation_fragment:
  - ivshmem.fleet._common
  - ivshmem.fleet._common.attributes
  - ivshmem.fleet._migration_options
options:
  phase:
    description:
      - V(full) migrates and verifies with both guests on this host.
      - V(send) migrates to O(uri), leaves the source paused and returns its checksums.
      - V(receive) verifies O(destination) against O(expected_checksums) and continues it.
      - V(abort) resumes a source left paused by V(send).
    type: str
    choices: [full, send, receive, abort]
    default: full
  guest:
    description: The running master guest to migrate (phases V(full), V(send), V(abort)).
    type: str
  destination:
    description: The destination guest, in state V(incoming) (phases V(full), V(receive)).
    type: str
  uri:
    description:
      - Migration URI the source connects to, a C(unix:) socket on this host. Required with
        O(phase=send); with O(phase=full) it defaults to the destination's
        O(ivshmem.fleet.guest#module:incoming_uri).
    type: str
  expected_checksums:
    description: The C(source_checksums) that O(phase=send) returned, one per ivshmem device (O(phase=receive)).
    type: list
    elements: str
  timeout:
    description: Seconds the migration may take before it is cancelled and rolled back.
    type: int
    default: 300
  verify:
    description: Compare the shared-memory checksums of both sides before the destination runs.
    type: bool
    default: true
  stop_source:
    description: Quit the source QEMU after a verified migration (it must never resume).
    type: bool
    default: true
notes:
  - Idempotent. When the destination already runs and the source is stopped or gone, nothing is done.
seealso:
  - module: ivshmem.fleet.guest
  - module: ivshmem.fleet.server
'''

EXAMPLES = r'''
- name: Prepare a destination on a fresh server held for the master
  ivshmem.fleet.server:
    name: group1-b
    size: 64M
    vectors: 2
    admission: held
    hold_for: db-master-b

- name: Start the destination
  ivshmem.fleet.guest:
    name: db-master-b
    state: incoming
    ivshmem:
      - server: group1-b
        role: master
        vectors: 2

- name: Migrate and verify
  ivshmem.fleet.migrate:
    guest: db-master
    destination: db-master-b
    timeout: 120
  register: moved

- name: In phases, step 1 sends
  ivshmem.fleet.migrate:
    phase: send
    guest: db-master
    uri: unix:/run/ivshmem-fleet/guests/db-master-b/incoming.sock
  register: sent

- name: Step 2 verifies and continues the destination
  ivshmem.fleet.migrate:
    phase: receive
    destination: db-master-b
    expected_checksums: "{{ sent.migration.source_checksums }}"

- name: Show the cost
  ansible.builtin.debug:
    msg: "{{ moved.migration.total_time_ms }} ms, checksums {{ moved.migration.verification.memories }}"
'''

RETURN = r'''
migration:
  description: QEMU's figures and the verification.
  returned: always
  type: dict
  contains:
    status:
      description: V(completed), V(received), V(source resumed), V(already migrated) or V(would migrate) (check mode).
      type: str
      sample: completed
    uri:
      description: The migration URI used.
      type: str
      sample: unix:/run/ivshmem-fleet/guests/db-master-b/incoming.sock
    total_time_ms:
      description: QEMU's total migration time.
      type: int
      sample: 30
    downtime_ms:
      description: QEMU's downtime (without the verification pause).
      type: int
      sample: 14
    setup_time_ms:
      description: QEMU's setup time.
      type: int
      sample: 1
    ram:
      description: QEMU's RAM statistics (transferred, total, remaining, mbps, ...).
      type: dict
      sample: {"transferred": 632980, "total": 71835648}
    events:
      description: The MIGRATION states seen, with milliseconds since the start.
      type: list
      elements: dict
      sample: [{"status": "active", "at_ms": 2}, {"status": "completed", "at_ms": 32}]
    verification:
      description: What was checked while both sides were paused, and what it cost.
      type: dict
      sample:
        ok: true
        destination_ivposition: {"ivshmem0": 0}
        checksum_seconds: 0.004
        memories:
          - {"source": "/dev/shm/a", "destination": "/dev/shm/b", "source_checksum": "chunked-crc32-32MiB:c2d4",
             "destination_checksum": "chunked-crc32-32MiB:c2d4"}
    source_checksums:
      description: Checksums of the paused source's shared memories (O(phase=send)).
      type: list
      elements: str
      sample: ["chunked-crc32-32MiB:c2d4d98fd2154c60"]
    source_state:
      description: V(stopped) or V(postmigrate).
      type: str
      sample: stopped
    destination_state:
      description: The destination's QEMU run state afterwards.
      type: str
      sample: running
    elapsed_s:
      description: Wall time of the whole step, verification included.
      type: float
      sample: 0.044
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ivshmem.fleet.plugins.module_utils._migration import Migration
from ansible_collections.ivshmem.fleet.plugins.module_utils._module import run_manager
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import COMMON_ARGS, MIGRATE_ARGS


def main():
    module = AnsibleModule(
        argument_spec=dict(COMMON_ARGS, **MIGRATE_ARGS),
        required_if=[('phase', 'full', ['guest', 'destination']), ('phase', 'send', ['guest', 'uri']),
                     ('phase', 'receive', ['destination']), ('phase', 'abort', ['guest'])],
        supports_check_mode=True,
    )
    run_manager(module, Migration, 'migrated')


if __name__ == '__main__':
    main()
