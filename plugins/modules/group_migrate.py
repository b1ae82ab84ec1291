# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: group_migrate
short_description: Move a shared-memory group to another host, verified, resumable and locked
version_added: 1.0.0
description:
  - Runs on the controller (an action plugin) and drives both hosts itself with
    M(ivshmem.fleet.move_host), over connections built from each host's inventory variables.
    One task moves one group; the task's own host does not matter.
  - "The sequence: on the destination, a fresh server admitting only the master, which waits
    paused as a migration destination and must hold ID 0. On the source, the peers are paused (their
    writes are not dirty-tracked), the master migrates with QMP events and the switchover gate,
    and the paused source is hashed while the destination hashes what it loaded (in parallel).
    With both checksums equal and IVPOSITION 0, the destination continues, its server opens and
    the peers start there with their pinned IDs. Last, nothing of the group is left on the source."
  - "A journal on both hosts (C(<runtime_dir>/moves/<group>.json)) records each step before it
    runs. Running the same task again after any interruption (controller killed, connection lost,
    a QEMU killed, a host unreachable or rebooted, a checksum mismatch) first finishes the move when
    the destination was verified, or else rolls the group back to the source with its memory
    intact. Only when the destination cannot be reached after the source was told the destination
    may run does the source stay paused; the error says so and the same task resolves it."
  - "A lock per group on both hosts: a second move of the same group fails at once, naming the run,
    controller and process that hold it, with nothing touched. A lock left by a dead run (its
    process gone on this controller, or its lease expired) is taken over and resolved."
  - "The source hands its checksums straight to the destination over an authenticated channel
    (TCP to the destination's migration address on the group's C(migration_port) + 1,
    HMAC-SHA256 with a secret made for this run only), so the destination continues the moment they
    match, with no controller round trip while the master is out of service."
  - "The migration stream is encrypted and both ends authenticated (QEMU's TLS): the destination
    accepts only the source's certificate, and the source checks that it reaches the destination's.
    Each host needs its credentials from M(ivshmem.fleet.migration_credentials) (the
    R(ivshmem.fleet.hypervisor,ansible_collections.ivshmem.fleet.hypervisor_role) role installs
    them); a host without them fails the move before anything changes."

  - "Reports, beside QEMU's total time and downtime, the real outage: C(master_outage_ms) from the
    source's QMP STOP event to the destination's RESUME event, and C(peer_outage_ms) from the first
    peer stopped (or unplugged) to the last peer running (or plugged back) on the destination. Host
    clocks are compared with the controller's by reading them with C(date) (a module's round trip is
    too long on a slow host); C(clock_uncertainty_ms) bounds the error, and C(msg) says it."
  - Refuses migration settings that corrupt shared memory (postcopy, C(x-ignore-shared)).
  - "Peers: a group with C(peer_mode=live) keeps its peers running (QEMU's documented procedure):
    each peer's device is unplugged on the source (its guest OS releases it), the master moves, then
    each peer is live-migrated and its device plugged back on the destination (a doorbell group's
    with its pinned ID, a plain group's with its memory backend, onto the destination's region).
    With C(peer_mode=restart) (the default) the peers are paused and fresh peers start on the destination."
  - Shows progress on the controller while the migration runs (percent, bytes left, throughput, time left).
  - "Host variables: C(ivshmem_fleet_runtime_dir) (default C(/run/ivshmem-fleet)),
    C(ivshmem_fleet_migration_address) (default C(ansible_host)): the address the destination
    listens on for the migration stream, on the group's C(migration_port);
    C(ivshmem_fleet_server_overrides): server options that differ on that host;
    C(ivshmem_fleet_guest_overrides): guest options that differ on that host (its QEMU O(ivshmem.fleet.guest#module:binary), say);
    C(ivshmem_fleet_tls_dir) (default C(/etc/ivshmem-fleet/tls)): the host's migration credentials."
author:
  - ivshmem.fleet contributors (@ivshmem-fleet)
extends_documentation_fragment:
  - ivshmem.fleet._migration_options
attributes:
  action:
    support: full
    description: An action plugin on the controller.
  async:
    support: none
    description: Long waits are inside the plugin, with timeouts derived from the sizes.
  check_mode:
    support: full
    description: Looks at both hosts and predicts (move, already moved, or resolve an interrupted move).
  diff_mode:
    support: full
    description: Shows the group's host before and after.
  idempotent:
    support: full
    description: A group already on the destination (and no move left open) is not touched.
  platform:
    support: full
    platforms: posix
    description: Target OS/families that can be operated against.
options:
  group:
    description: One group as M(ivshmem.fleet.plan) returned it (a move's C(group) in its RV(ivshmem.fleet.plan#module:moves)).
    type: dict
    required: true
  source:
    description:
      - Inventory name of the host the move runs from (a move's C(source) in the plan's RV(ivshmem.fleet.plan#module:moves)).
      - Without it, the same rule - the plan's C(current_host), or for a group on the destination whose move away
        is in transition, that move's destination.
    type: str
  destination:
    description: Inventory name of the destination host.
    type: str
    required: true
  timeout:
    description:
      - Seconds one migration may take. By default 60 s plus 120 s per GiB of guest RAM and shared
        memory, plus twice the time the bandwidth limit needs for them.
    type: int
  checksum_timeout:
    description: Seconds the checksums may take. By default 30 s plus 60 s per GiB of shared memory.
    type: int
  start_timeout:
    description: Seconds a server or guest may take to start.
    type: int
    default: 120
  attempts:
    description: Attempts when a migration fails and the group was rolled back (the group keeps serving from the source).
    type: int
    default: 3
  backoff:
    description: Seconds to wait after the first failed attempt, growing with each attempt.
    type: int
    default: 5
  lease:
    description: Seconds the lock holds without renewal, for runs from other controllers.
    type: int
    default: 120
  verify_channel:
    description:
      - The source hands its checksums straight to the destination, which continues the moment
        they match. V(false) relays them through the controller instead, which is slower (two module
        calls while the master is out); for networks where the port after C(migration_port) of O(group) is closed.
    type: bool
    default: true
  tls:
    description:
      - Encrypt and authenticate the migration stream with each host's credentials (see
        M(ivshmem.fleet.migration_credentials)).
      - V(false) sends all guest RAM and the shared memory in clear, readable and alterable by
        anyone on the path; only for a network that is itself private to the two hosts.
    type: bool
    default: true
  progress_interval:
    description: Seconds between progress lines while the migration runs.
    type: float
    default: 5.0
  lock_wait:
    description:
      - Seconds to wait for another run of this controller that holds the group - one whose
        ansible-playbook was killed goes on in its detached worker - to finish before this one
        resolves what it left (a progress line every few seconds). A run of another controller
        that holds the group fails this one at once. V(0) fails at once here too.
    type: int
    default: 900
notes:
  - The hosts need no access to each other except to the destination's C(migration_port) of O(group)
    (the migration stream) and the port after it (the verification channel).
seealso:
  - module: ivshmem.fleet.plan
  - module: ivshmem.fleet.move_host
'''

EXAMPLES = r'''
- name: Validate the groups and find whether g1 moves to hv2, and from where
  ivshmem.fleet.plan:
    groups: "{{ ivshmem_fleet_groups }}"
    hosts: "{{ groups['hypervisors'] }}"
    facts: "{{ dict(groups['hypervisors'] | zip(groups['hypervisors'] | map('extract', hostvars, ['ansible_facts', 'ivshmem_fleet']))) }}"
    group: g1
    destination: hv2
  run_once: true
  register: fleet_plan

- name: Move g1 to hv2 (nothing to do when it serves there already)
  ivshmem.fleet.group_migrate:
    group: "{{ item.group }}"
    source: "{{ item.source }}"
    destination: "{{ item.destination }}"
  loop: "{{ fleet_plan.moves }}"
  run_once: true
  register: moved

- name: The real outage
  ansible.builtin.debug:
    msg: "{{ item.move.master_outage_ms }} ms master, {{ item.move.peer_outage_ms }} ms peers"
  loop: "{{ moved.results }}"
  run_once: true
'''

RETURN = r'''
msg:
  description: One line on what happened.
  returned: always
  type: str
  sample: "group g1 moved hv1 -> hv2: master out 310 ms, peers out 1250 ms (the hosts' clocks compared within 12.5 ms;
    QEMU: total 3700 ms, downtime 298 ms); restarted peers ran 640 ms after the master"
move:
  description: The move's report.
  returned: always
  type: dict
  contains:
    outcome:
      description: "V(moved), V(already moved), or in check mode V(would move) or V(would resolve ...)."
      type: str
      sample: moved
    resolved:
      description: What was done first about a move an earlier run left open.
      type: str
      returned: when an interrupted move was resolved
      sample: rolled back to hv1 (its destination was not verified)
    master_outage_ms:
      description: The master's real outage (source STOP to destination RESUME).
      type: int
      sample: 310
    peer_outage_ms:
      description:
        - The peers' real outage (first peer stopped to last peer running on the destination). With
          C(peer_mode=live), their shared-memory outage (first unplugged to last plugged back).
      type: int
      sample: 1250
    peers_start_ms:
      description:
        - From the master running on the destination to the last restarted peer running there (their
          QEMUs started, at once when their IDs are pinned, and admitted). Their guests boot after
          that. Absent when no peer is restarted.
      type: int
      sample: 640
    peers:
      description:
        - Per peer, how it moved - C(mode) V(live) (kept running - C(restarted) false, its
          C(shared_memory_outage_ms) from unplug to plug-back, QEMU's C(downtime_ms) and C(total_time_ms)
          of its own migration, its C(id) and C(ivposition) read back on the destination) or
          V(restart) (a fresh guest on the destination).
      type: dict
      sample: {"g1-peer1": {"mode": "live", "restarted": false, "shared_memory_outage_ms": 2100, "downtime_ms": 40,
                            "total_time_ms": 900, "id": 1, "ivposition": 1}}
    fallback:
      description: Peers of a V(live) group restarted instead, as C(peer_fallback=restart) allows, and why.
      type: dict
      sample: {"g1-peer2": "guest g1-peer2 did not release its ivshmem device ivshmem0 within 30 s"}
    total_time_ms:
      description: QEMU's total migration time.
      type: int
      sample: 3700
    downtime_ms:
      description: QEMU's own downtime figure (ends when the destination has the state, not when it runs).
      type: int
      sample: 298
    clock_uncertainty_ms:
      description: Bound of the error from comparing the hosts' clocks.
      type: float
      sample: 40.5
    verification:
      description: Both sides' checksums, the destination's IVPOSITION and the hashing times.
      type: dict
      sample: {"source_checksums": ["chunked-crc32-32MiB:5d0c"], "destination_checksums": ["chunked-crc32-32MiB:5d0c"]}
    timeouts_s:
      description: The migration and checksum timeouts used.
      type: dict
      sample: {"migration": 104, "checksum": 31}
    attempt:
      description: The attempt that succeeded.
      type: int
      sample: 1
'''
