#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: plan
short_description: Validate shared-memory groups and say where each one serves from
version_added: 1.0.0
description:
  - Checks the shared-memory groups of an inventory before anything changes. One master per group,
    unique group and guest names, hosts that exist, sizes and vectors that fit, and every guest
    option as M(ivshmem.fleet.guest) would check it. Each error names the group and the field.
  - Returns each group with the parameters of its M(ivshmem.fleet.server) and
    M(ivshmem.fleet.guest) tasks, and the host it serves from now. That is the source of a move left
    in transition (see C(in_transition); M(ivshmem.fleet.group_migrate) resolves it before anything
    else), else the host whose I(running) guests include its master (a paused, incoming or migrated
    master does not count), else the host the inventory names.
  - With O(rollout), also places a rollout batch - where each group of the batch's hosts waits while its
    host changes. Each group is placed once, on a destination outside the batch, the largest group first,
    each on the destination with the most room left (the moves spread over the destinations). A
    destination's room is its available memory (never more than its total less what the servers and
    running guests on it are given) less O(rollout.reserve), capped by O(rollout.capacity), and it
    shrinks with every group placed on it in the batch. A group needs its guests' RAM,
    O(rollout.guest_overhead) per guest and its shared memory. What a group keeps on huge pages (its shared memory
    with C(hugepages), its guests' RAM with theirs) comes from the host's huge page pools instead, outside
    its available memory (servers and running guests on them are left out of what a destination is given too),
    and a group goes only where every page size it takes is available (C(hugepages) of M(ivshmem.fleet.info)'s
    facts; a host without a pool of that size has none), counted per destination and page size through
    the batch, and an error names the page size, the host with the most and the shortfall. Before placing the batch, every group
    of the inventory must fit alone on some destination other than its own host, else the error names
    the first that does not and by how much; a batch whose groups do not fit together fails naming the
    group left over. Nothing moves either way.
  - With O(group) or O(evacuate) and O(destination), also says which groups move, from where - RV(moves), the
    one decision the migrate playbook and M(ivshmem.fleet.group_migrate) act on. That is the named group, or
    every group serving from the evacuated host now, except those already on the destination; a group on
    the destination whose earlier move is in transition moves all the same (resolving that move first), after
    the others. Where O(facts) show the destination's huge page pools, the chosen groups' huge pages must be
    available there together, else the error names the group, the host, the page size and the shortfall
    (M(ivshmem.fleet.group_migrate) checks again before anything changes). Nothing moves here either.
  - Pure logic, run on the controller by the collection's action plugin of the same name. It makes no
    connection to the host the task names (use C(run_once)).
author:
  - ivshmem.fleet contributors (@ivshmem-fleet)
extends_documentation_fragment:
  - ivshmem.fleet._common
attributes:
  action:
    support: full
    description: An action plugin on the controller; no connection to the host.
  async:
    support: none
    description: Computes at once.
  check_mode:
    support: full
    description: Only computes.
  diff_mode:
    support: none
    description: Nothing changes.
  idempotent:
    support: full
    description: Never changes anything.
  platform:
    support: full
    platforms: posix
    description: Target OS/families that can be operated against.
options:
  groups:
    description:
      - The groups. Each has C(name), C(host), C(size), C(vectors), C(server) (server options such as
        C(implementation), C(binary), C(memory_dir), C(max_clients)), C(master) and C(peers) (guest
        options of M(ivshmem.fleet.guest) without C(ivshmem), which the group sets), C(pin_ids)
        (default true, the master gets ID 0 and the peers 1..n in order, whatever the connection
        order), C(migration_port) (default 4444), C(peer_mode) (V(restart), the default - peers are
        paused and restarted on the destination of a move; V(live) - kept running - their devices are
        placed for hotplug, unplugged before the master moves, the peers migrated and plugged back,
        a plain group's onto the destination's region; their guests need an OS with PCI hotplug),
        C(peer_fallback) (V(none), the default, or
        V(restart) - a peer that does not release its device is restarted instead of failing the
        move), C(peer_unplug_timeout) (seconds, default 30) and C(host_peers) (host-side peers of the
        group's server, each C(name) and optionally C(user), its account, by default C(ivh-NAME) - the
        server admits each by its account and pins its ID after the guests'; the host runs it with
        C(ivshmem-fleet-peer), installed beside the server program - see the README).
      - C(type) is V(doorbell) (the default - a server's memory, IDs and doorbells) or V(plain) - one
        region of shared memory (C(ivshmem-plain)), a file root makes and owns, no server, IDs or
        doorbells. A plain group takes C(region) (C(shm_name), C(memory_dir), C(group), C(mode), as
        M(ivshmem.fleet.region) takes them) and C(host_accounts) (host accounts that read and write
        the region beside its guests), and not C(vectors), C(pin_ids), C(server) or C(host_peers). Its
        peers move as a doorbell group's do, restarted or live.
    type: list
    elements: dict
    required: true
  hosts:
    description: The inventory's hypervisor hosts.
    type: list
    elements: str
    required: true
  facts:
    description: Each host's C(ivshmem_fleet) fact from M(ivshmem.fleet.info), to find where groups run now.
    type: dict
  rollout:
    description:
      - Place a rollout batch (see the description); the result is RV(rollout). O(facts) must hold every
        destination's, with C(host_memory) (M(ivshmem.fleet.info) reports it).
    type: dict
    suboptions:
      batch:
        description: The hosts changing together now. Their groups move out; none of them is a destination.
        type: list
        elements: str
        default: []
      skip:
        description: Hosts of the batch whose groups stay (the change is on them already).
        type: list
        elements: str
        default: []
      destinations:
        description:
          - The hosts that may keep groups meanwhile (spares), or V(any) - every host of O(hosts) outside the
            batch, including hosts that serve groups of their own (their room counts those).
          - A list must not name a host of the batch.
        type: raw
        default: any
      reserve:
        description: Memory each destination keeps for itself (bytes, or a size such as V(256M)).
        type: raw
        default: 256M
      guest_overhead:
        description: Memory one QEMU takes beyond its guest's RAM (bytes, or a size).
        type: raw
        default: 64M
      capacity:
        description: At most this much memory (a size) of a destination host goes to the rollout, by host.
        type: dict
        default: {}
  group:
    description:
      - The group to move (its name); the result has RV(moves). An unknown name fails, naming it.
      - Mutually exclusive with O(evacuate); needs O(destination).
    type: str
    version_added: 1.1.0
  evacuate:
    description:
      - Move every group serving from this host now; the result has RV(moves).
      - Mutually exclusive with O(group); needs O(destination).
    type: str
    version_added: 1.1.0
  destination:
    description: The host of O(hosts) the groups of O(group) or O(evacuate) move to.
    type: str
    version_added: 1.1.0
seealso:
  - module: ivshmem.fleet.info
  - module: ivshmem.fleet.group_migrate
'''

EXAMPLES = r'''
- name: Validate the groups and place them
  ivshmem.fleet.plan:
    groups: "{{ ivshmem_fleet_groups }}"
    hosts: "{{ groups['hypervisors'] }}"
  run_once: true
  register: fleet_plan

- name: Place the groups of hv1 and hv2 on the spares s1 and s2 while those two hosts change
  ivshmem.fleet.plan:
    groups: "{{ ivshmem_fleet_groups }}"
    hosts: "{{ groups['hypervisors'] }}"
    facts: "{{ dict(groups['hypervisors'] | zip(groups['hypervisors'] | map('extract', hostvars, ['ansible_facts', 'ivshmem_fleet']))) }}"
    rollout:
      batch: [hv1, hv2]
      destinations: [s1, s2]
      capacity: {s2: 8G}
  run_once: true
  register: fleet_placed

- name: Which groups leave hv1 for hv2, and from where
  ivshmem.fleet.plan:
    groups: "{{ ivshmem_fleet_groups }}"
    hosts: "{{ groups['hypervisors'] }}"
    facts: "{{ dict(groups['hypervisors'] | zip(groups['hypervisors'] | map('extract', hostvars, ['ansible_facts', 'ivshmem_fleet']))) }}"
    evacuate: hv1
    destination: hv2
  run_once: true
  register: fleet_moves
'''

RETURN = r'''
groups:
  description:
    - The validated groups, each with the server's and guests' module options, the pinned C(ids) and
      its C(host_peers) (C(name), C(user), C(id)).
  returned: success
  type: list
  elements: dict
  sample:
    - name: g1
      host: hv1
      current_host: hv1
      in_transition: null
      size: 67108864
      vectors: 2
      migration_port: 4444
      memory: /dev/shm/ivshmem-fleet-g1
      server: {"name": "g1", "size": "64M", "vectors": 2, "pins": {"g1-master": 0, "g1-peer1": 1}}
      master: {"name": "g1-master", "ivshmem": [{"server": "g1", "role": "master", "vectors": 2}]}
      peers: [{"name": "g1-peer1", "ivshmem": [{"server": "g1", "role": "peer", "vectors": 2}]}]
      guest_names: [g1-master, g1-peer1]
      host_peers: [{"name": "bell", "user": "ivh-bell", "id": 2}]
by_host:
  description: Group names by the host they serve from now.
  returned: success
  type: dict
  sample: {"hv1": ["g1"], "hv2": []}
hugepages:
  description:
    - By host, the huge pages the groups serving from it now take, page size (V(2M), V(1G)) to pages - each group's
      C(hugepage_need) (its shared memory on huge pages and its guests' RAM on them, bytes by page size, in
      RV(groups)) in whole pages. Every host of O(hosts) is there, V({}) where none are needed.
    - What the C(ivshmem.fleet.hypervisor) role reserves on each host (O(ivshmem.fleet.host#module:hugepages)),
      with its C(ivshmem_fleet_hugepages_spare) for groups that move in.
  returned: success
  type: dict
  sample: {"hv1": {"2M": 34}, "hv2": {}}
  version_added: 1.1.0
moves:
  description:
    - The moves for O(group) or O(evacuate), in order - each with C(name), C(source) (the host it runs from -
      where the group serves now, or for a group on the destination whose move away is in transition, that
      move's destination), C(destination) and C(group) (as in RV(groups), what M(ivshmem.fleet.group_migrate)
      takes). Empty when every group chosen is on the destination already.
  returned: when group or evacuate is given
  type: list
  elements: dict
  sample: [{"name": "g1", "source": "hv1", "destination": "hv2", "group": {"name": "g1", "current_host": "hv1"}}]
  version_added: 1.1.0
rollout:
  description: The batch's placement, with O(rollout) only.
  returned: when rollout is given
  type: dict
  contains:
    batch:
      description: The hosts of the batch.
      type: list
      elements: str
      sample: [hv1, hv2]
    assignment:
      description: Each group of the batch that moves, with its destination.
      type: dict
      sample: {"g1": "s1", "g2": "s2"}
    moves:
      description:
        - By host of the batch, the groups to move out - C(name), C(destination), C(need) (bytes of ordinary
          memory; its huge pages are the group's C(hugepage_need)) and C(group) (as in RV(groups)). Empty for a
          host in O(rollout.skip) or one that serves no group.
      type: dict
      sample: {"hv1": [{"name": "g1", "destination": "s1", "need": 243269632, "group": {"name": "g1"}}], "hv2": []}
    destinations:
      description:
        - By destination, its room (bytes of ordinary memory), what is C(left) after this batch, and its C(groups);
          C(hugepages_room) and C(hugepages_left) - its huge pages available, in bytes by page size, before and after.
      type: dict
      sample:
        s1: {"room": 812384256, "left": 569114624, "groups": ["g1"], "hugepages_room": {"2M": 134217728},
             "hugepages_left": {"2M": 62914560}}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import GroupPlan
from ansible_collections.ivshmem.fleet.plugins.module_utils._module import run_manager
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import COMMON_ARGS, PLAN_ARGS


def main():
    module = AnsibleModule(argument_spec=dict(COMMON_ARGS, **PLAN_ARGS), supports_check_mode=True)
    run_manager(module, GroupPlan, 'planned')


if __name__ == '__main__':
    main()
