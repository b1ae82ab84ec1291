#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: move_host
short_description: One host's step in moving a shared-memory group (driven by ivshmem.fleet.group_migrate)
version_added: 1.0.0
description:
  - The host side of M(ivshmem.fleet.group_migrate). Each call runs one O(step) of the move on this
    host and records it in the group's journal (C(<runtime_dir>/moves/<group>.json)) before it acts,
    so an interrupted move is resolved by running the move again.
  - Not meant to be called from playbooks. Use M(ivshmem.fleet.group_migrate), which calls this
    module on the source and the destination host in the right order.
  - The record also holds the group's lock, naming the run and controller process that hold it.
author:
  - ivshmem.fleet contributors (@ivshmem-fleet)
extends_documentation_fragment:
  - ivshmem.fleet._common
  - ivshmem.fleet._host_overrides
attributes:
  check_mode:
    support: none
    description: Driven by M(ivshmem.fleet.group_migrate), which predicts in check mode with O(step=inspect) only.
  diff_mode:
    support: none
    description: The journal is the record of what changed.
  idempotent:
    support: full
    description: Every step is safe to repeat for the same run; a repeated step does what is still left.
  platform:
    support: full
    platforms: posix
    description: Target OS/families that can be operated against.
options:
  step:
    description: The step to run on this host.
    type: str
    required: true
    choices: [inspect, claim, mark, progress, prepare_destination, unplug_peers, send, verify, commit,
              prepare_peer, send_peer, plug_peer, finish_source, rollback_source, rollback_destination, release]
  group:
    description: The group, as M(ivshmem.fleet.plan) returns it.
    type: dict
    required: true
  run_id:
    description: The move's run ID (the lock holder).
    type: str
    required: true
  holder:
    description: The controller process holding the lock (host, pid, start time).
    type: dict
  role:
    description: This host's role in the move.
    type: str
    choices: [source, destination]
  source:
    description: Inventory name of the source host (recorded).
    type: str
  destination:
    description: Inventory name of the destination host (recorded).
    type: str
  expect_run:
    description: With O(step=claim), the run whose dead lock this run takes over.
    type: str
  mark:
    description: With O(step=mark), the journal step to record.
    type: str
  uri:
    description: The destination's migration URI.
    type: str
  max_bandwidth:
    description: Migration bandwidth limit in bytes per second.
    type: int
  downtime_limit:
    description: Migration downtime limit in milliseconds.
    type: int
  timeout:
    description: Seconds the migration (and the destination's wait for it) may take.
    type: int
  start_timeout:
    description: Seconds a server or guest may take to start.
    type: int
  lease:
    description: Seconds the lock stays valid without a renewal (another controller may take it over after).
    type: int
  checksum:
    description: Hash used per chunk of shared memory.
    type: str
    choices: [crc32, sha1, sha256, blake2b]
  checksum_timeout:
    description: Seconds the checksums may take (and the destination waits for the source's).
    type: int
  channel_key:
    description:
      - Hex secret of this run's verification channel (O(step=send) and O(step=verify)); without it
        the engine relays the checksums and calls O(step=commit).
    type: str
  expected_checksums:
    description: With O(step=commit), the source's checksums.
    type: list
    elements: str
  force:
    description:
      - Roll back even past the journal step that normally forbids it (the engine knows the other side).
      - With O(step=claim), take the group whatever run holds it (only to show in tests what the lock prevents).
    type: bool
    default: false
  outcome:
    description: Recorded with the final journal step.
    type: str
  live_peers:
    description:
      - The peers this move keeps running (the group's C(peer_mode=live)) - unplugged on the source
        (O(step=unplug_peers)), migrated after the master (O(step=prepare_peer), O(step=send_peer)),
        plugged back on the destination (O(step=plug_peer)). The others are paused and restarted.
    type: list
    elements: str
  peer:
    description: With O(step=prepare_peer), O(step=send_peer) and O(step=plug_peer), the peer (one of O(live_peers)).
    type: str
  tls:
    description:
      - The migration's TLS settings for this host, C(dir) (its credentials, see
        M(ivshmem.fleet.migration_credentials)) and C(peer) (the inventory name of the other host,
        whose certificate this host expects). Omitted, the stream runs in clear.
    type: dict
seealso:
  - module: ivshmem.fleet.group_migrate
'''

EXAMPLES = r'''
- name: What a move left on this host
  ivshmem.fleet.move_host:
    step: inspect
    group: "{{ fleet_plan.groups[0] }}"
    run_id: look
  register: journal
'''

RETURN = r'''
record:
  description: The group's journal record on this host after the step.
  returned: when the step has one
  type: dict
  sample: {"run_id": "3f2a9c0d11aa", "step": "prepared", "history": [["claimed", 1795763203.3], ["prepared", 1795763205.1]]}
state:
  description: Where the group's guests and server are on this host.
  returned: with inspect and claim
  type: dict
  sample: {"guests": {"g1-master": "running", "g1-peer1": "running"}, "server": "started"}
host_time:
  description: The host's clock when the step ended (the engine estimates clock offsets from it).
  returned: always
  type: float
  sample: 1795763205.123
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ivshmem.fleet.plugins.module_utils._module import run_manager
from ansible_collections.ivshmem.fleet.plugins.module_utils._move import STEPS, MoveStep
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import COMMON_ARGS, MOVE_ARGS, MOVE_HOST_OPTIONS, OVERRIDE_ARGS, pick


def main():
    module = AnsibleModule(
        argument_spec=dict(
            COMMON_ARGS,
            step=dict(type='str', required=True, choices=list(STEPS)),
            group=dict(type='dict', required=True),
            run_id=dict(type='str', required=True),
            holder=dict(type='dict'),
            role=dict(type='str', choices=['source', 'destination']),
            source=dict(type='str'),
            destination=dict(type='str'),
            expect_run=dict(type='str'),
            mark=dict(type='str'),
            uri=dict(type='str'),
            channel_key=dict(type='str', no_log=True),
            expected_checksums=dict(type='list', elements='str'),
            force=dict(type='bool', default=False),
            outcome=dict(type='str'),
            tls=dict(type='dict'),
            live_peers=dict(type='list', elements='str'),
            peer=dict(type='str'),
            **dict(OVERRIDE_ARGS, **pick(MOVE_ARGS, *MOVE_HOST_OPTIONS, without_default=True))
        ),
        supports_check_mode=False,
    )
    run_manager(module, MoveStep, 'done')


if __name__ == '__main__':
    main()
