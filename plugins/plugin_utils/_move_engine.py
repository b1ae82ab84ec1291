# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The group move engine: one resumable, locked move of a shared-memory group between hosts.

It runs on the controller (the group_migrate action plugin; tests and benchmarks run it
in-process) and drives the host side (module_utils/_move.py, the move_host module) through
*host handles*: objects with ``call(params) -> dict`` that raise HostUnreachable or StepFailed
(_inventory_hosts.InventoryHost; the tests' LocalHost, a runtime directory on this machine).
The same sequence serves two real hosts and two runtime directories on one machine.

Decisions, all here:
- Lock: each host's record names the run holding the group. A run that is alive (same
  controller: its pid; another controller: the lease) makes a second run fail at once. A dead
  run's record is taken over (compare-and-swap) and resolved first.
- Resolve: finish the move when the destination was verified (its journal reached
  ``verified``), else roll back: the destination discarded, the source resumed. When the
  destination cannot be reached and the source journal says ``committing``, nothing can be
  decided safely: the source stays paused and the error says so; the same command resolves it.
- Figures: the real outage of the master (source STOP to destination RESUME, QMP event
  timestamps) and of the peers (first stopped to last running), beside QEMU's own.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import socket
import threading
import time
import uuid

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError, ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._migration import refusal_repeats
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import check_size
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import GUEST_DEFAULTS, IVSHMEM_DEFAULTS, MIGRATION_DEFAULTS
from ansible_collections.ivshmem.fleet.plugins.module_utils._placement import (
    hugepage_need, hugepage_refusal, hugepage_room, hugepages_short)
from ansible_collections.ivshmem.fleet.plugins.module_utils._qemu_binary import QemuBinaryError, check_guest
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import WaitTimeout, wait_for

GIB = float(1 << 30)
# (option, lowest, highest) of a move's figures; None leaves an option to its default.
OPTION_RANGES = (('max_bandwidth', 1 << 20, 1 << 50), ('downtime_limit', 1, 3600 * 1000), ('timeout', 1, 86400),
                 ('checksum_timeout', 1, 86400), ('start_timeout', 1, 3600), ('attempts', 1, 100),
                 ('backoff', 0, 3600), ('lease', 30, 86400), ('progress_interval', 0.1, 3600), ('lock_wait', 0, 86400))
# Generous on a slow TCG host: a migration's budget grows by this much per GiB moved.
SECONDS_PER_GIB = 120
# Readings of each host's clock for a move's figures (the shortest round trip is kept).
CLOCK_SAMPLES = 3


class HostUnreachable(FleetError):
    """The host did not answer (connection lost, host down)."""


class StepFailed(FleetError):
    """The host answered that a step failed; the message is the host's."""


class LockHeld(FleetError):
    """Another live run holds the group."""


class MoveFailed(FleetError):
    """The move did not happen (or not yet); ``report`` says where the group is."""

    def __init__(self, message, report=None):
        super(MoveFailed, self).__init__(message)
        self.report = report or {}


def this_holder():
    """Who runs the engine: the controller host, the process and when it started."""
    pid = os.getpid()
    return {'controller': socket.gethostname(), 'pid': pid, 'start_ticks': _start_ticks(pid), 'since': time.time()}


def _start_ticks(pid):
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return int(handle.read().rsplit(')', 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


# The runs this process is executing now: a record of this process from any other run is stale.
ACTIVE_RUNS = set()


def holder_alive(record):
    """Is the run that wrote ``record`` still alive? Same controller: ask the kernel; else the lease."""
    holder = record.get('holder') or {}
    if holder.get('controller') == socket.gethostname() and holder.get('pid') == os.getpid():
        return record.get('run_id') in ACTIVE_RUNS
    if holder.get('controller') == socket.gethostname() and holder.get('pid'):
        ticks = _start_ticks(holder['pid'])
        return ticks is not None and ticks == holder.get('start_ticks')
    return not record.get('lease_expired', True)


class Safeguards:
    """What the engine's decisions rest on: the lock and the journals. Every move runs with this
    one; the tests pass a weaker one (tests/integration/move_lab.py) to show that each case of the
    failure matrix fails without what it relies on."""

    # After a failed step and on a rerun the journals decide: finish a verified destination, keep
    # a committing source paused, resolve a dead run's move. Without them the engine can only
    # guess "roll back", which risks two masters.
    journals = True

    def holder_alive(self, record):
        """The lock: does the run that wrote ``record`` still hold the group?"""
        return holder_alive(record)

    def before_recovery(self, error, report):
        """Called after a failed step, before the journals are read. Raising MoveFailed here
        leaves the group as it is (a guess of "touch nothing", which risks a frozen group)."""


def migration_timeout(field, guest, max_bandwidth, shared=0):
    """Seconds to migrate ``guest`` (its RAM plus ``shared`` bytes of shared memory it carries)."""
    total = check_size(field, guest.get('memory') or GUEST_DEFAULTS['memory'], minimum=1, power_of_two=False) + shared
    return int(60 + SECONDS_PER_GIB * total / GIB + 2.0 * total / max(1, max_bandwidth))


def derived_timeouts(group, max_bandwidth, timeout=None, checksum_timeout=None):
    """Seconds for the master's migration (it carries the shared memory) and for the checksums."""
    shm = int(group.get('size') or 0)
    migration = timeout or migration_timeout('group.master.memory', group['master'], max_bandwidth, shm)
    checksum = checksum_timeout or int(30 + 60 * shm / GIB)
    return migration, checksum


class GroupMove:
    """Move ``group`` (as ivshmem.fleet.plan returns it) from ``source`` to ``destination``.

    ``hosts`` maps host names to handles. ``options``: uri (the destination's migration URI),
    max_bandwidth, downtime_limit, timeout and checksum_timeout (None: derived), checksum,
    start_timeout, attempts, backoff, lease, progress_interval. ``progress(dict)`` is called while
    the migration runs; ``observer(step)`` before each step (tests inject faults there);
    ``safeguards`` (a Safeguards, the default) is what the decisions rest on.
    """

    def __init__(self, group, source, destination, hosts, options, holder=None, progress=None, observer=None,
                 run_id=None, safeguards=None):
        if not isinstance(group, dict) or not isinstance(group.get('master'), dict) or 'name' not in group:
            raise ValidationError('group', 'must be one group as ivshmem.fleet.plan returns it (name, master, peers, ...)')
        self.group = group
        self.name = group['name']
        if source == destination:
            raise ValidationError('destination', 'is the host the group moves from (%s)' % source)
        for field, host in (('source', source), ('destination', destination)):
            if host not in hosts:
                raise ValidationError(field, '%r is not a known host' % (host,))
        self.source, self.destination, self.hosts = source, destination, hosts
        self.options = dict(options)
        if not self.options.get('uri'):
            raise ValidationError('uri', 'the destination\'s migration URI is needed')
        # Every figure checked before anything is claimed: a negative lease would turn the
        # cross-controller lock off, a zero timeout fail a move half-way.
        for field, minimum, maximum in OPTION_RANGES:
            value = self.options.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or
                                      not minimum <= value <= maximum):
                raise ValidationError(field, '%r is outside %s..%s' % (value, minimum, maximum))
        self.timeout, self.checksum_timeout = derived_timeouts(
            group, self.options.get('max_bandwidth') or MIGRATION_DEFAULTS['max_bandwidth'], self.options.get('timeout'),
            self.options.get('checksum_timeout'))
        self.holder = holder or this_holder()
        self.run_id = run_id or uuid.uuid4().hex[:12]
        # The verification channel's secret, for this run only (see _verify_channel.py).
        self.channel_key = None if self.options.get('relay_checksums') else os.urandom(32).hex()
        # {host: its credentials directory}: the stream is encrypted and both ends authenticated
        # (_tls.py). None only when the caller chose a stream in clear.
        self.tls_dirs = self.options.get('tls_dirs')
        self.progress = progress
        self.safeguards = safeguards or Safeguards()
        self.observer = observer
        # Peers kept running through the move (peer_mode: live): unplugged, migrated after the
        # master, plugged back. The source's journal says which, once they are unplugged.
        self.live_peers = [p['name'] for p in group.get('peers') or []] if group.get('peer_mode') == 'live' else []
        self.offsets = {}
        self.report = {'group': self.name, 'from': source, 'to': destination, 'run_id': self.run_id,
                       'timeouts_s': {'migration': self.timeout, 'checksum': self.checksum_timeout}}

    # --- talking to hosts ---------------------------------------------------------------
    def _call(self, host, step, **params):
        if self.observer is not None:
            self.observer('%s:%s' % (step, host))
        params = dict(dict(uri=self.options['uri']), **params)
        params = dict(params, step=step, group=self.group, run_id=self.run_id, holder=self.holder,
                      source=self.source, destination=self.destination,
                      role='source' if host == self.source else 'destination',
                      start_timeout=self.options.get('start_timeout'), lease=self.options.get('lease'),
                      tls=self._tls_for(host), live_peers=self.live_peers)
        before = time.time()
        try:
            result = self.hosts[host].call(params)
        finally:
            after = time.time()
            # Where a move's time goes: each round trip to a host, the step's own work included.
            self.report.setdefault('round_trips', []).append([step, host, round(after - before, 3)])
        if 'host_time' in result:
            self._note_clock(host, before, result['host_time'], after)
        return result

    def _note_clock(self, host, before, host_time, after):
        """A reading of ``host``'s clock taken between ``before`` and ``after`` (the controller's):
        the shortest round trip gives the best estimate of its offset."""
        if after - before < self.offsets.get(host, (None, 1e9))[1]:
            self.offsets[host] = (host_time - (before + after) / 2.0, after - before)

    def _tls_for(self, host):
        if not self.tls_dirs:
            return None
        return {'dir': self.tls_dirs[host], 'peer': self.destination if host == self.source else self.source}

    def _read_clocks(self, *hosts):
        """Compares the hosts' clocks with the controller's where their handles can read them
        cheaply (a few samples each, the shortest round trip kept, as for a module's). The
        figures only: a clock that cannot be read leaves the estimate from the steps."""
        for host in hosts:
            read = getattr(self.hosts[host], 'clock', None)
            for _sample in range(CLOCK_SAMPLES if read else 0):
                try:
                    self._note_clock(host, *read())
                except (HostUnreachable, StepFailed):
                    break

    def _local_time(self, host, stamp):
        return None if stamp is None else stamp - self.offsets.get(host, (0.0, 0.0))[0]

    # --- the whole job --------------------------------------------------------------------
    def run(self):
        ACTIVE_RUNS.add(self.run_id)
        try:
            return self._run()
        finally:
            ACTIVE_RUNS.discard(self.run_id)

    def _run(self):
        views = self._claim()
        resolved = self._resolve(views) if self._unfinished(views) else None
        if resolved:
            self.report['resolved'] = resolved
            try:
                views = self._inspect_both()
            except MoveFailed:
                self._release_all('resolved, not moved')
                raise
        if self._whole(views[self.destination]['state']) and not self._any(views[self.source]['state']):
            self._release_all('already there')
            return dict(self.report, changed=bool(resolved), outcome='resolved: ' + resolved if resolved else 'already moved')
        if not self._whole(views[self.source]['state']):
            self._release_all('not moved')
            raise MoveFailed('group %s does not run whole on %s (%s); deploy it first' % (
                self.name, self.source, views[self.source]['state']['guests']), self.report)
        try:
            self._preflight(views)
        except MoveFailed as exc:
            self._release_all('not moved: %s' % exc)
            raise
        lacking = self._lacking_credentials(views)
        if lacking:
            self._release_all('not moved: no credentials')
            raise MoveFailed('%s; the group was not moved' % lacking, self.report)
        attempts = max(1, self.options.get('attempts') or 1)
        for attempt in range(1, attempts + 1):
            self.report['attempt'] = attempt
            try:
                self._move()
                return dict(self.report, changed=True, outcome='moved')
            except (HostUnreachable, StepFailed) as exc:
                raise MoveFailed('%s; the group is in between: run the same command again to resolve it' % exc,
                                 self.report)
            except MoveFailed as exc:
                self.report.setdefault('failures', []).append(str(exc))
                if exc.report.get('repeats') and attempt < attempts:
                    raise MoveFailed('%s (not retried: the destination would refuse the same stream again)' % exc,
                                     self.report)
                if attempt == attempts or not exc.report.get('rolled_back'):
                    raise MoveFailed(str(exc), self.report)
                time.sleep((self.options.get('backoff') or 0) * attempt)
        raise MoveFailed('unreachable')  # pragma: no cover

    def _inspect_both(self):
        """Both hosts' views, asked at once (read-only: a round trip to a slow host is seconds)."""
        views, errors = {}, {}

        def inspect(host):
            try:
                views[host] = self._call(host, 'inspect')
            except Exception as exc:  # pylint: disable=broad-except  # re-raised in the caller's thread
                errors[host] = exc
        other = threading.Thread(target=inspect, args=(self.destination,))
        other.daemon = True
        other.start()
        inspect(self.source)
        other.join()
        for host in (self.source, self.destination):
            if isinstance(errors.get(host), HostUnreachable):
                raise MoveFailed('%s is unreachable (%s); nothing was changed' % (host, errors[host]), self.report)
            if host in errors:
                raise errors[host]
        return views

    def _lacking_credentials(self, views):
        """Why the stream cannot be encrypted, or None. Only a migration needs the credentials:
        resolving an interrupted move (commit, roll back, clean up) never does."""
        for host in (self.source, self.destination):
            missing = views[host].get('tls_missing')
            if missing:
                return ('%s has no migration credentials in %s (missing %s): run the ivshmem.fleet.hypervisor role '
                        'on it (or ivshmem.fleet.migration_credentials), or move with tls: false on a network '
                        'private to the two hosts' % (host, self.tls_dirs[host], ', '.join(missing)))
        return None

    def _preflight(self, views):
        """Before anything changes: the destination's QEMU runs each guest of the group as its source
        runs it (the versioned machine type it resolved, its ivshmem devices), its ports are free and
        its huge page pools have the group's huge pages. The guests then start on the destination
        with those types, whatever the alias resolves to there."""
        src, dst = views[self.source], views[self.destination]
        if not self._whole(src['state']):
            return
        types = src['state'].get('machines') or {}
        problems, versions = [], {}
        for guest in [self.group['master']] + list(self.group.get('peers') or []):
            name = guest['name']
            offers = (dst.get('qemu') or {}).get((dst.get('binaries') or {}).get(name))
            source_offers = (src.get('qemu') or {}).get((src.get('binaries') or {}).get(name)) or {}
            versions[self.source] = source_offers.get('version')
            if offers is None:
                continue  # a host side that does not say: the migration itself will tell
            versions[self.destination] = offers.get('version')
            machine = types.get(name) or guest.get('machine') or GUEST_DEFAULTS['machine']
            if offers.get('error'):
                problems.append('guest %s: %s' % (name, offers['error']))
                continue
            devices = sorted(set('ivshmem-' + (d.get('type') or IVSHMEM_DEFAULTS['type']) for d in guest.get('ivshmem') or []))
            try:
                check_guest(offers, machine, devices, self.destination)
            except QemuBinaryError as exc:
                problems.append('guest %s (machine type %s, started on %s with QEMU %s): %s' % (
                    name, machine, self.source, source_offers.get('version') or 'unknown', str(exc).split(': ', 1)[1]))
        taken = dst.get('ports_taken') or []
        if taken:
            problems.append('port%s %s taken by another process there (the migration stream and the '
                            'verification channel listen on the group\'s migration_port and the next one); free '
                            '%s or give the group another migration_port' % (
                                's' if len(taken) > 1 else '', ' and '.join(str(p) for p in taken),
                                'them' if len(taken) > 1 else 'it'))
        lacking = self._hugepages_lacking(dst)
        if lacking:
            problems.append(lacking)
        if problems:
            raise MoveFailed('group %s cannot move to %s, so nothing was changed: %s' % (
                self.name, self.destination, '; '.join(problems)), dict(self.report, refused=True))
        self.report['qemu_versions'] = versions
        self.report['machine_types'] = dict(types)

        def pinned(guest):
            return dict(guest, machine_type=types[guest['name']]) if types.get(guest['name']) else guest
        self.group = dict(self.group, master=pinned(self.group['master']),
                          peers=[pinned(peer) for peer in self.group.get('peers') or []])

    def _hugepages_lacking(self, dst):
        """Why the destination's pools cannot give the group's huge pages, or None. The destination
        says what the group takes there (its overrides may run the guests without huge pages), else
        the plan's need counts. Pages the group holds there already (a move resumed: its memory or
        guests left there) count as free to it; a host side that does not report its pools says
        nothing (memory made there fails instead)."""
        need = dst['hugepage_need'] if isinstance(dst.get('hugepage_need'), dict) else hugepage_need(self.group)
        if not need or not isinstance(dst.get('hugepages'), dict):
            return None
        room = hugepage_room(dst)
        for size, held in ((dst.get('state') or {}).get('hugepages_held') or {}).items():
            room[size] = room.get(size, 0) + held
        if not hugepages_short(need, room):
            return None
        return 'the group %s (grow its pool: the host variable ivshmem_fleet_hugepages_spare, which the hypervisor ' \
               'role reserves, or ivshmem.fleet.host\'s hugepages)' % hugepage_refusal(need, [self.destination], {self.destination: room})

    def predict(self):
        """Check mode: what run() would do, from a look at both hosts; nothing changes."""
        views = self._inspect_both()
        records = [view['record'] for view in views.values() if view['record'] and view['record'].get('step') != 'done']
        if any(holder_alive(record) for record in records):
            raise LockHeld('group %s is being moved by run %s' % (self.name, records[0].get('run_id')))
        if records:
            return dict(self.report, changed=True, outcome='would resolve the move left at step %s, then move' % (
                records[0].get('step')))
        if self._whole(views[self.destination]['state']) and not self._any(views[self.source]['state']):
            return dict(self.report, changed=False, outcome='already moved')
        if not self._whole(views[self.source]['state']):
            raise MoveFailed('group %s does not run whole on %s (%s); deploy it first' % (
                self.name, self.source, views[self.source]['state']['guests']), self.report)
        self._preflight(views)
        lacking = self._lacking_credentials(views)
        if lacking:
            raise MoveFailed(lacking, self.report)
        return dict(self.report, changed=True, outcome='would move')

    def _live_holder(self, views):
        """(host, record) of another run that lives and holds the group, or None."""
        for host, view in sorted(views.items()):
            record = view['record']
            if self._held_by_other(record) and self.safeguards.holder_alive(record):
                return host, record
        return None

    def _claim(self):
        views = self._inspect_both()
        held = self._live_holder(views)
        lock_wait = self.options.get('lock_wait') or 0
        if held and lock_wait and (held[1].get('holder') or {}).get('controller') == socket.gethostname():
            # A run of this controller whose ansible-playbook was killed goes on in its detached
            # worker: the rerun waits for it to finish (bounded), then resolves what it left.
            def finished():
                holder = self._live_holder(views)
                if holder is None:
                    return True
                self.report['waiting_for'] = holder[1]['run_id']
                if self.progress is not None:
                    self.progress({'group': self.name, 'waiting_for': holder[1]['run_id'], 'step': holder[1].get('step'),
                                   'pid': (holder[1].get('holder') or {}).get('pid')})
                views.update(self._inspect_both())
                return self._live_holder(views) is None
            try:
                _value, waited = wait_for('run %s to finish' % held[1]['run_id'], finished, lock_wait, interval=2.0,
                                          max_interval=5.0)
                self.report['lock_waited_s'] = round(waited, 1)
                held = None
            except WaitTimeout as exc:
                self.report['lock_waited_s'] = round(exc.waited, 1)
        if held:
            host, record = held
            raise LockHeld('group %s is being moved by run %s (pid %s on %s, step %s on %s)%s; nothing was changed' % (
                self.name, record['run_id'], (record.get('holder') or {}).get('pid'),
                (record.get('holder') or {}).get('controller'), record.get('step'), host,
                ', still after waiting %s s for it' % self.report['lock_waited_s'] if 'lock_waited_s' in self.report else ''))
        for host in (self.source, self.destination):
            record = views[host]['record']
            expect = record['run_id'] if self._held_by_other(record) else None
            try:
                views[host] = self._call(host, 'claim', expect_run=expect, force=not self.safeguards.journals)
            except StepFailed as exc:
                if host == self.destination:
                    self._release(self.source, 'not moved: %s' % exc)  # nothing was done under it
                raise LockHeld(str(exc))
        return views

    def _held_by_other(self, record):
        return bool(record) and record.get('step') != 'done' and record.get('run_id') != self.run_id

    def _unfinished(self, views):
        if not self.safeguards.journals:
            return False
        return any((view['record'] or {}).get('taken_over') for view in views.values())

    @staticmethod
    def _whole(state):
        return all(where == 'running' for where in state['guests'].values())

    @staticmethod
    def _any(state):
        return any(where != 'absent' and where != 'stopped' for where in state['guests'].values())

    def _release_all(self, outcome):
        for host in (self.source, self.destination):
            self._release(host, outcome)

    def _release(self, host, outcome):
        """Best effort: a claim left behind is harmless (the next run resolves it to nothing)."""
        try:
            self._call(host, 'release', outcome=outcome)
        except (HostUnreachable, StepFailed):
            pass

    # --- resolving an interrupted move ----------------------------------------------------
    def _resolve(self, views):
        """Finish or roll back the move a dead run left; returns what was done."""
        taken = [view['record']['taken_over'] for view in views.values() if (view['record'] or {}).get('taken_over')]
        old_source = taken[0].get('source') or self.source
        old_destination = taken[0].get('destination') or self.destination
        for host in (old_source, old_destination):
            if host not in views:
                self._release_all('not moved: another move is open')
                raise MoveFailed('group %s is in a move from %s to %s left by another run; move it between '
                                 'those hosts to resolve it' % (self.name, old_source, old_destination), self.report)
        if self._destination_may_run(views[old_destination]):
            self._call(old_destination, 'commit')
            self.live_peers = (views[old_source]['record'] or {}).get('live_peers') or []
            self._move_live_peers(old_source, old_destination)
            self._call(old_source, 'finish_source')
            self._call(old_destination, 'release', outcome='moved (resolved)')
            return 'finished the move to %s (its destination was verified)' % old_destination
        discarded = self._call(old_destination, 'rollback_destination', outcome='rolled back (resolved)',
                               force=self._destination_dead_after_verifying(views[old_destination]))
        resumed = self._call(old_source, 'rollback_source', force=True, outcome='rolled back (resolved)')
        if not discarded.get('discarded') and not resumed.get('resumed'):
            return 'released the lock of run %s, which had changed nothing' % taken[0].get('run_id')
        return 'rolled back to %s (its destination was not verified)' % old_source

    def _destination_may_run(self, view):
        """Verified by this move and its master alive: the group is finished there, never undone."""
        step = (view['record'] or {}).get('step')
        master = view['state']['guests'].get(self.group['master']['name'])
        return step in ('verified', 'running') and master not in ('absent', 'stopped')

    def _destination_dead_after_verifying(self, view):
        """Verified but its master is gone: nothing runs the group there, so it is discarded."""
        step = (view['record'] or {}).get('step')
        return step in ('verified', 'running') and not self._destination_may_run(view)

    # --- one attempt --------------------------------------------------------------------
    def _move(self):
        """One attempt. The source hands its checksums to the destination over the verification
        channel, and the destination continues the moment they match: no controller round trip
        while the master is out. Without a verdict, the controller compares and commits."""
        src, dst = self.source, self.destination
        try:
            self._call(dst, 'prepare_destination', uri=self.options['uri'])
            if self.live_peers:
                unplugged = self._call(src, 'unplug_peers')['record']
                self.live_peers = unplugged.get('live_peers') or []
                if unplugged.get('fallback'):
                    self.report['fallback'] = unplugged['fallback']
            sent, checked = self._send_and_verify(self.options.get('checksum') or MIGRATION_DEFAULTS['checksum'])
            if checked.get('step') != 'running':
                if sent['sent']['checksums'] != checked['verification']['checksums']:
                    raise StepFailed('shared memory differs after the migration: source %s, destination %s' % (
                        sent['sent']['checksums'], checked['verification']['checksums']))
                self._call(src, 'mark', mark='committing')
                self._call(dst, 'commit', expected_checksums=sent['sent']['checksums'])
        except (StepFailed, HostUnreachable) as exc:
            self._recover(exc)
        self._move_live_peers(src, dst)
        # Each step answers with its journal record: the figures need no further round trip.
        finished = self._call(src, 'finish_source').get('record')
        released = self._call(dst, 'release', outcome='moved').get('record')
        self._figures(finished if finished is not None else self._call(src, 'inspect')['record'],
                      released if released is not None else self._call(dst, 'inspect')['record'])

    def _send_and_verify(self, checksum):
        """The source sends while the destination waits to verify; progress while both run."""
        src, dst = self.source, self.destination
        results, errors = {}, {}

        def run(key, host, step, **params):
            try:
                results[key] = self._call(host, step, **params)['record']
            except Exception as exc:  # pylint: disable=broad-except  # re-raised in the caller's thread
                errors[key] = exc

        common = dict(checksum=checksum, timeout=self.timeout + self.checksum_timeout, uri=self.options['uri'],
                      checksum_timeout=self.checksum_timeout, channel_key=self.channel_key)
        send = dict(common, max_bandwidth=self.options.get('max_bandwidth'),
                    downtime_limit=self.options.get('downtime_limit'), timeout=self.timeout)
        threads = [threading.Thread(target=run, args=('sent', src, 'send'), kwargs=send),
                   threading.Thread(target=run, args=('checked', dst, 'verify'), kwargs=common)]
        for thread in threads:
            thread.daemon = True
            thread.start()
        interval = wait = self.options.get('progress_interval') or 2.0
        while threads[0].is_alive():
            threads[0].join(wait)
            if threads[0].is_alive() and self.progress is not None:
                asked = time.monotonic()
                self._report_progress()
                # A slow host (a loaded VM) takes seconds to answer: waiting at least as long again
                # keeps the polling off the source's back while it sends.
                wait = max(interval, time.monotonic() - asked)
        if 'sent' in errors:
            # A destination that refused the stream has said why by now: its words come first.
            threads[1].join(5)
            # The destination never gets the stream: discard it so its verify step ends too.
            exited = self._discard_destination()
            threads[1].join(30)
            said = str(errors['checked']) if 'checked' in errors else '; '.join(
                'the destination %s exited: %s' % (name, text) for name, text in sorted((exited or {}).items()))
            if said:
                raise StepFailed('%s; %s' % (errors['sent'], said))
            raise errors['sent']
        threads[1].join(self.checksum_timeout + 60)
        if 'checked' in errors:
            raise errors['checked']
        if 'checked' not in results:
            raise StepFailed('the destination did not finish verifying within %d s' % (self.checksum_timeout + 60))
        return results['sent'], results['checked']

    def _report_progress(self):
        try:
            progress = self._call(self.source, 'progress').get('progress')
        except Exception:  # pylint: disable=broad-except  # progress is best effort, never fatal
            return
        if progress and progress.get('mbps'):
            remaining = progress.get('remaining_bytes') or 0
            progress['eta_s'] = round(remaining * 8 / (progress['mbps'] * 1e6), 1)
        if progress:
            self.progress(dict(progress, group=self.name))

    def _discard_destination(self, force=False):
        """When the destination confirmed that nothing of this move runs there: {guest: the last
        log lines of a QEMU that had stopped on its own} (empty, but not None); else None."""
        try:
            result = self._call(self.destination, 'rollback_destination', outcome='discarded', force=force)
        except (HostUnreachable, StepFailed):
            return None
        if result.get('exited'):
            self.report['destination_exited'] = dict(self.report.get('destination_exited') or {}, **result['exited'])
        return result.get('exited') or {}

    def _recover(self, exc):
        """After a failed step: forward when the destination was verified, else roll back.

        The journals decide: ``verified`` on the destination means it may run (finish the move);
        ``committing`` on the source with the destination out of reach means nobody can tell
        (the source stays paused); anything else is rolled back to the source.
        """
        self.safeguards.before_recovery(exc, self.report)
        try:
            source_record = self._call(self.source, 'inspect')['record'] or {}
        except (HostUnreachable, StepFailed):
            source_record = {'step': 'committing'}  # unknown: never resume a source that may have handed over
        committing = source_record.get('step') == 'committing' and self.safeguards.journals
        try:
            view = self._call(self.destination, 'inspect')
        except (HostUnreachable, StepFailed):
            view = None
            if committing and (source_record.get('sent') or {}).get('channel') == 'verified by the destination':
                # The destination told the source it runs the group: the source must never resume.
                self._call(self.source, 'finish_source')
                raise MoveFailed('%s; %s verified and runs group %s but cannot be reached now; nothing of it '
                                 'is left on %s: run the same command again to confirm' % (
                                     exc, self.destination, self.name, self.source), self.report)
            if committing:
                raise MoveFailed('%s; %s cannot be reached and may already run group %s, so %s keeps it paused: '
                                 'run the same command again to resolve' % (exc, self.destination, self.name,
                                                                            self.source), self.report)
        if view is not None and self._destination_may_run(view) and self.safeguards.journals:
            try:
                self._call(self.destination, 'commit')
                return
            except (HostUnreachable, StepFailed) as again:
                raise MoveFailed('%s; the verified destination could not be finished (%s): run the same '
                                 'command again to resolve' % (exc, again), self.report)
        discarded = self._discard_destination(
            force=view is not None and self._destination_dead_after_verifying(view)) is not None
        if committing and not discarded:
            raise MoveFailed('%s; %s did not confirm it discarded group %s and may run it, so %s keeps it paused: '
                             'run the same command again to resolve' % (exc, self.destination, self.name,
                                                                        self.source), self.report)
        try:
            self._call(self.source, 'rollback_source', force=True, outcome='rolled back: %s' % exc)
        except (HostUnreachable, StepFailed) as again:
            raise MoveFailed('%s; resuming the group on %s failed too (%s): run the same command again' % (
                exc, self.source, again), self.report)
        said = '; '.join('the destination %s exited: %s' % item for item in sorted(
            (self.report.get('destination_exited') or {}).items()) if item[1] not in str(exc))
        message = '%s%s' % (exc, '; ' + said if said else '')
        raise MoveFailed('%s; group %s runs on %s again, its memory untouched' % (message, self.name, self.source),
                         dict(self.report, rolled_back=True, repeats=refusal_repeats(message)))

    def _move_live_peers(self, src, dst):
        """The master runs on ``dst``: each live peer migrates there and is plugged back. Never
        rolled back (the master has moved): a peer that fails keeps running without its device,
        on ``src`` until its migration completed, on ``dst`` after, and the same command moves it
        or plugs it back."""
        peers = dict((p['name'], p) for p in self.group.get('peers') or [])
        for name in self.live_peers:
            # A live peer carries its RAM only: its device, and so the shared memory, is unplugged.
            timeout = migration_timeout(
                'group.peers.memory', peers[name], self.options.get('max_bandwidth') or MIGRATION_DEFAULTS['max_bandwidth'])
            where = src
            try:
                self._call(dst, 'prepare_peer', peer=name, uri=self.options['uri'])
                where = '%s (or %s, if its migration completed)' % (src, dst)
                self._call(src, 'send_peer', peer=name, uri=self.options['uri'], timeout=timeout,
                           max_bandwidth=self.options.get('max_bandwidth'),
                           downtime_limit=self.options.get('downtime_limit'))
                where = dst
                self._call(dst, 'plug_peer', peer=name, timeout=timeout)
            except (HostUnreachable, StepFailed) as exc:
                raise MoveFailed('the master of group %s runs on %s, but peer %s is not back in the group yet (%s); it '
                                 'keeps running on %s without its shared memory: run the same command again'
                                 % (self.name, dst, name, exc, where), self.report)

    def _figures(self, source_record, destination_record):
        src, dst = self.source, self.destination
        # The outages compare one host's timestamps with the other's: read both clocks now.
        self._read_clocks(src, dst)
        sent = source_record.get('sent') or {}
        checks = destination_record.get('verification') or {}
        self.report['verification'] = {
            'source_checksums': sent.get('checksums'), 'destination_checksums': checks.get('checksums'),
            'destination_ivposition': checks.get('ivposition'), 'source_checksum_s': sent.get('checksum_seconds'),
            'destination_checksum_s': checks.get('checksum_seconds'),
            'channel': sent.get('channel') or 'checksums relayed by the controller'}
        stopped = self._local_time(src, sent.get('stopped_at'))
        resumed = self._local_time(dst, destination_record.get('resumed_at'))
        peers_stopped = self._local_time(src, sent.get('peers_stopped_at'))
        peers_running = self._local_time(dst, destination_record.get('peers_running_at'))
        restarted = [p for p in self.group.get('peers') or [] if p['name'] not in self.live_peers]
        # How long the restarted peers took to run once the master did: QEMUs started (at once
        # when pinned), admitted with their IDs; their guests' own boot comes after.
        peers_start_ms = _ms(peers_running, resumed) if restarted else None
        peers, spans = self._peer_figures(source_record, destination_record)
        if spans:
            # Kept running, each peer is out of its shared memory from its unplug to its plug-back.
            starts = [start for start, _end in spans]
            ends = [end for _start, end in spans]
            starts += [peers_stopped] if peers_stopped is not None else []
            ends += [peers_running] if peers_running is not None else []
            peers_stopped = None if None in starts else min(starts)
            peers_running = None if None in ends else max(ends)
        self.report.update({
            'total_time_ms': sent.get('total_time_ms'), 'downtime_ms': sent.get('downtime_ms'),
            'master_outage_ms': _ms(resumed, stopped),
            'peer_outage_ms': _ms(peers_running, peers_stopped) if self.group.get('peers') else None,
            'peers_start_ms': peers_start_ms,
            'peers': peers,
            'clock_uncertainty_ms': round(sum(self.offsets.get(h, (0, 0))[1] for h in (src, dst)) * 500.0, 1),
            'transferred_bytes': (sent.get('ram') or {}).get('transferred'),
        })

    def _peer_figures(self, source_record, destination_record):
        """Per peer: moved live (its shared-memory outage, QEMU's figures for its own migration)
        or restarted (a fresh guest on the destination). Also (unplugged, plugged back) of each
        live peer, in controller time."""
        src, dst = self.source, self.destination
        unplugged = source_record.get('peers_unplugged_at') or {}
        sent = source_record.get('peers_sent') or {}
        plugged = destination_record.get('peers_plugged') or {}
        figures, spans = {}, []
        for peer in self.group.get('peers') or []:
            name = peer['name']
            if name not in self.live_peers:
                figures[name] = {'mode': 'restart', 'restarted': True}
                continue
            back = plugged.get(name) or {}
            span = (self._local_time(src, unplugged.get(name)), self._local_time(dst, back.get('plugged_at')))
            spans.append(span)
            figures[name] = {
                'mode': 'live', 'restarted': False, 'id': back.get('id'), 'ivposition': back.get('ivposition'),
                'shared_memory_outage_ms': _ms(span[1], span[0]),
                'downtime_ms': (sent.get(name) or {}).get('downtime_ms'),
                'total_time_ms': (sent.get(name) or {}).get('total_time_ms')}
        return figures, spans


def _ms(end, start):
    if end is None or start is None:
        return None
    return int(round((end - start) * 1000))
