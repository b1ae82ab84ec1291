# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Migrating an ivshmem master, verified before the destination runs (ivshmem.fleet.migrate).

Policy on top of the QMP protocol: preflight, capabilities, the pre-switchover gate,
waiting on MIGRATION events, verification while both sides are paused, and rollback.
Nothing is lost: either the destination runs with memory proven equal and IVPOSITION 0,
or the source runs again and the destination is gone.

The primitives here (start, follow, settle, verify, resume) serve both this module and the
group move's host steps (_move.py). The module's own stream stays on this host (``unix:``);
between hosts the group move runs it over TLS (_tls.py). Phases: ``full`` does it all;
``send`` migrates and checksums the paused source, ``receive`` verifies against those checksums
and continues, ``abort`` resumes a paused source whose destination failed its verification.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
import time

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host, _tls
from ansible_collections.ivshmem.fleet.plugins.module_utils._checksum import ALGORITHMS as CHECKSUMS, checksum_files
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError, ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import guest_status
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import check_int, check_name
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import MIGRATE_ARGS, MIGRATE_DEFAULTS
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPError, QMPTimeout, event_seconds
from ansible_collections.ivshmem.fleet.plugins.module_utils._state_machine import StateMachine
from ansible_collections.ivshmem.fleet.plugins.module_utils._vm import GuestHandle, read_ivshmem_registers
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import WaitTimeout, wait_for

FINAL = ('completed', 'failed', 'cancelled')
PHASES = tuple(MIGRATE_ARGS['phase']['choices'])


class MigrationError(FleetError):
    """The migration did not happen; the message says where the group serves from."""


def memory_path_of(layout, device):
    """The host file behind a device's shared memory, or None where the host cannot see it."""
    if device['type'] == 'plain':
        return device['memory_path']
    if device.get('server'):
        record = _host.read_json(layout.server_record(device['server'])) or {}
        return record.get('memory_path')
    return None


# Capabilities that break shared memory (see the facts file): refused before anything moves.
CORRUPTING = {
    'postcopy-ram': 'postcopy needs explicit support from every process that shares the memory, '
                    'so the peers would see a torn region',
    'x-ignore-shared': 'it skips shared RAM blocks, so the shared memory would not reach another host',
}


MIGRATION_FD = 'ivshmem-fleet-migration'

# What a destination QEMU says (in its log, as it exits) when it refuses a stream for a reason that
# the same stream would meet again: another machine type, devices or RAM blocks it does not have.
# A refusal of these kinds is not retried; a cut connection ("Input/output error") is.
REPEATING_REFUSALS = ('Machine type received', 'Unknown savevm section', 'Unknown ramblock', 'Length mismatch',
                      'Unknown combination of migration flags', 'Configuration section missing')
# A stream cut short: its load fails with an I/O error, whatever section it was in. Retried.
CUT_SHORT = 'Input/output error'


def refusal_repeats(text):
    """Does ``text`` (a destination's log lines) say the stream was refused for good (and not
    merely cut short: 'error while loading state section id 2(ram) | load of migration failed:
    Input/output error' is a cut link)?"""
    text = text or ''
    return CUT_SHORT not in text and any(marker in text for marker in REPEATING_REFUSALS)


def start_migration(sq, uri, max_bandwidth, downtime_limit, tls=None):
    """Refuse corrupting settings, enable events and the switchover gate, start the migration
    (over TLS to the expected destination when ``tls`` is given: see _tls.py)."""
    enabled = [c['capability'] for c in sq.command('query-migrate-capabilities') if c.get('state')]
    for capability in enabled:
        if capability in CORRUPTING:
            raise MigrationError('refused: migration capability %s is on, and %s' % (capability, CORRUPTING[capability]))
    sq.command('migrate-set-capabilities', {'capabilities': [
        {'capability': 'events', 'state': True},
        {'capability': 'pause-before-switchover', 'state': True}]})
    sq.command('migrate-set-parameters', {'max-bandwidth': max_bandwidth, 'downtime-limit': downtime_limit})
    _tls.setup_source(sq, tls)
    sq.command('migrate', {'uri': _reachable(sq, uri)})


def _reachable(sq, uri):
    """The URI the source QEMU migrates to. A ``unix:`` socket is the destination guest's, in its
    own directory, out of the source's account's reach (each guest runs under its own): root
    connects and hands the source QEMU the connection (``fd:``)."""
    if not uri.startswith('unix:'):
        return uri
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(uri[len('unix:'):])
        sq.command('getfd', {'fdname': MIGRATION_FD}, fd=conn.fileno())
    except OSError as exc:
        raise MigrationError('cannot reach the destination at %s: %s' % (uri, exc))
    finally:
        conn.close()  # the source QEMU holds its own copy now
    return 'fd:%s' % MIGRATION_FD


def follow_migration(sq, timeout, on_progress=None, gate=None, tick=1.0):
    """Wait on MIGRATION events until completed, opening the switchover gate on the way.

    ``on_progress(query-migrate)`` runs at every pass and at least every ``tick`` seconds.
    Returns QEMU's figures, the states seen and ``stopped_at`` (the source's STOP event time).
    Raises MigrationError on failure or timeout (the caller rolls back).
    """
    started = time.monotonic()
    report = {'events': [], 'stopped_at': None}
    while True:
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            raise MigrationError('no completion within %d s' % timeout)
        try:
            event = sq.wait_event(('MIGRATION', 'MIGRATION_PASS', 'STOP'), min(tick, remaining))
        except QMPTimeout:
            if on_progress is not None:
                on_progress(sq.command('query-migrate'))
            continue
        if event['event'] == 'STOP':
            report['stopped_at'] = event_seconds(event)
            continue
        if event['event'] == 'MIGRATION_PASS':
            if on_progress is not None:
                on_progress(sq.command('query-migrate'))
            continue
        status = event['data']['status']
        report['events'].append({'status': status, 'at_ms': int((time.monotonic() - started) * 1000)})
        if status == 'pre-switchover':
            if gate is not None:
                gate()  # last look before committing
            sq.command('migrate-continue', {'state': 'pre-switchover'})
        elif status == 'completed':
            return _completed(sq, report, on_progress)
        elif status in ('failed', 'cancelled'):
            info = sq.command('query-migrate')
            raise MigrationError(info.get('error-desc') or 'migration %s' % status)


def _completed(sq, report, on_progress=None):
    """QEMU's figures of a completed migration. QEMU sends the completed event before it
    computes total-time and downtime (7.2: migration_completion, then
    migration_calculate_complete): asked at once, both can read 0. It enters postmigrate after
    computing them, so the figures are read then."""
    settle_source(sq)
    info = sq.command('query-migrate')
    if on_progress is not None:
        on_progress(info)
    report.update(status=info['status'], total_time_ms=info.get('total-time'), downtime_ms=info.get('downtime'),
                  setup_time_ms=info.get('setup-time'), ram=info.get('ram', {}))
    return report


def finish_started_migration(sq, timeout):
    """Take over a migration an earlier, cut step started (its events went to a connection that
    is gone): open its switchover gate and wait until it ends. Returns its figures like
    follow_migration, or None when no migration runs. Raises MigrationError when it fails."""
    status = sq.command('query-migrate').get('status') or 'none'
    if status in ('none', 'failed', 'cancelled'):
        return None
    if status == 'completed' and sq.command('query-status')['status'] not in ('postmigrate', 'finish-migrate'):
        # Running after 'completed': the migration that brought this QEMU here (query-migrate
        # shows the incoming side's status until an outgoing migration starts), not one it sent.
        return None
    if status == 'pre-switchover':
        sq.command('migrate-continue', {'state': 'pre-switchover'})
    try:
        wait_for('the migration started earlier to end',
                 lambda: sq.command('query-migrate').get('status') in FINAL, timeout, max_interval=0.5)
    except WaitTimeout as exc:
        raise MigrationError(str(exc))
    info = sq.command('query-migrate')
    if info['status'] != 'completed':
        raise MigrationError(info.get('error-desc') or 'migration %s' % info['status'])
    return _completed(sq, {'events': [], 'stopped_at': None})


def progress_of(info):
    """A migration's progress from ``query-migrate``: percent, bytes, throughput, QEMU's time."""
    ram = info.get('ram') or {}
    total, remaining = ram.get('total') or 0, ram.get('remaining') or 0
    return {'status': info.get('status'), 'total_bytes': total, 'remaining_bytes': remaining,
            'transferred_bytes': ram.get('transferred'), 'mbps': ram.get('mbps'),
            'percent': round(100.0 * (total - remaining) / total, 1) if total else None,
            'total_time_ms': info.get('total-time'), 'at': time.time()}


def cancel_and_resume(sq):
    """Cancel whatever migration runs and resume the source. Returns its run state."""
    status = sq.command('query-migrate').get('status') or 'none'
    if status not in FINAL + ('none',):
        sq.command('migrate_cancel')
        wait_for('the migration to stop', lambda: (sq.command('query-migrate').get('status') or 'none') in FINAL + ('none',), 30)
    if sq.command('query-status')['status'] != 'running':
        sq.command('cont')
    return sq.command('query-status')['status']


def settle_source(sq, timeout=10):
    """After ``completed`` QEMU passes through finish-migrate before postmigrate: wait for it."""
    try:
        wait_for('the source to settle in postmigrate',
                 lambda: sq.command('query-status')['status'] not in ('finish-migrate',), timeout,
                 interval=0.01, max_interval=0.05)
    except WaitTimeout as exc:
        raise MigrationError(str(exc))
    state = sq.command('query-status')['status']
    if state != 'postmigrate':
        raise MigrationError('the source is %s after the migration, not postmigrate' % state)


def wait_loaded(dq, timeout):
    """The destination has loaded the whole stream (the source's completed can come first)."""
    # Polled every 50 ms at most: this wait ends while the master is out of service.
    _value, waited = wait_for('the destination to finish loading',
                              lambda: dq.command('query-status')['status'] != 'inmigrate', timeout,
                              interval=0.02, max_interval=0.05)
    return waited


def verify_destination(dq, memories, algorithm):
    """A loaded, paused destination: IVPOSITION 0 and its memories' checksums."""
    result = {'ok': False, 'state': dq.command('query-status')['status']}
    if result['state'] not in ('paused', 'prelaunch'):
        result['problem'] = 'destination is %s, not paused after the migration' % result['state']
        return result
    positions = dict((k, v['ivposition']) for k, v in read_ivshmem_registers(dq).items())
    result['ivposition'] = positions
    if any(position != 0 for position in positions.values()):
        result['problem'] = 'destination IVPOSITION %s, expected 0 for the master' % positions
        return result
    sums, seconds = checksum_files(memories, algorithm)
    result.update(ok=True, checksums=[sums[path]['checksum'] for path in memories],
                  checksum_seconds=round(seconds, 3))
    return result


def _local_only(field, uri):
    """This module's stream is not encrypted: it stays on this host. Between hosts, group_migrate
    encrypts and authenticates it (_tls.py)."""
    if not (isinstance(uri, str) and uri.startswith('unix:')):
        raise ValidationError(field, 'must be a unix: socket on this host (not %r): a stream over the network '
                                     'would carry guest memory in clear; move groups between hosts with '
                                     'ivshmem.fleet.group_migrate, which encrypts and authenticates it' % (uri,))
    return uri


class Migration(StateMachine):
    def __init__(self, params, layout, check_mode):
        super(Migration, self).__init__(check_mode)
        self.layout = layout
        self.phase = params.get('phase') or MIGRATE_DEFAULTS['phase']
        if self.phase not in PHASES:
            raise ValidationError('phase', 'must be one of %s' % ', '.join(PHASES))
        needs_guest = self.phase in ('full', 'send', 'abort')
        needs_destination = self.phase in ('full', 'receive')
        self.source = check_name('guest', params.get('guest')) if needs_guest else None
        self.destination = check_name('destination', params.get('destination')) if needs_destination else None
        if self.phase == 'full' and self.source == self.destination:
            raise ValidationError('destination', 'must differ from guest')
        self.uri = params.get('uri')
        if self.phase == 'send' and not self.uri:
            raise ValidationError('uri', 'phase send needs the destination\'s migration URI')
        if self.uri is not None:
            _local_only('uri', self.uri)
        self.expected = params.get('expected_checksums') or []
        if self.phase == 'receive' and params.get('verify', MIGRATE_DEFAULTS['verify']) and not self.expected:
            raise ValidationError('expected_checksums', 'phase receive needs the checksums phase send returned')
        self.max_bandwidth = check_int('max_bandwidth', params.get('max_bandwidth', MIGRATE_DEFAULTS['max_bandwidth']), 1 << 20, 1 << 50)
        self.downtime_limit = check_int('downtime_limit', params.get('downtime_limit', MIGRATE_DEFAULTS['downtime_limit']), 1, 600000)
        self.timeout = check_int('timeout', params.get('timeout', MIGRATE_DEFAULTS['timeout']), 1, 7 * 86400)
        self.verify = params.get('verify', MIGRATE_DEFAULTS['verify'])
        self.checksum = params.get('checksum') or MIGRATE_DEFAULTS['checksum']
        if self.checksum not in CHECKSUMS:
            raise ValidationError('checksum', 'must be one of %s' % ', '.join(CHECKSUMS))
        if not isinstance(self.expected, list) or not all(isinstance(item, str) for item in self.expected):
            raise ValidationError('expected_checksums', 'must be a list of checksum strings')
        self.stop_source = params.get('stop_source', MIGRATE_DEFAULTS['stop_source'])

    def state_migrated(self):
        getattr(self, '_phase_' + self.phase)()

    @staticmethod
    def _where(status):
        return 'absent' if status is None else status['state']

    def _record_path(self, guest):
        return self.layout.guest_migration(guest)

    def _vm(self, guest):
        return GuestHandle.of(self.layout, guest)

    # --- phases -------------------------------------------------------------------------
    def _phase_full(self):
        src = guest_status(self.layout, self.source, registers=False)
        dst = guest_status(self.layout, self.destination, registers=False)
        self.before = {'guest': self._where(src), 'destination': self._where(dst)}
        if dst is not None and dst['state'] == 'running' and (src is None or src['state'] in ('stopped', 'migrated')):
            # Done before: at most the stale source is left to stop.
            if src is not None and src['state'] == 'migrated' and self.stop_source and self.change('stop source'):
                self._vm(self.source).quit(30)
            self.after = {'guest': 'stopped' if src else 'absent', 'destination': 'running'}
            self.result['migration'] = {'status': 'already migrated'}
            return
        devices = self._preflight_source(src)
        memories = self._preflight_destination(dst, devices, src)
        self.after = {'guest': 'stopped' if self.stop_source else 'migrated', 'destination': 'running'}
        if not self.change('migrate'):
            self.result['migration'] = {'status': 'would migrate'}
            return
        report = {'uri': self.uri or _local_only('destination incoming_uri', dst['incoming_uri']), 'events': []}
        started = time.monotonic()
        source, destination = self._vm(self.source), self._vm(self.destination)
        with source.qmp() as sq, destination.qmp() as dq:
            self._send(sq, report, started, gate=lambda: self._destination_waits(dq))
            verification = self._verify_destination(dq, memories, expected=None, source_qmp=sq)
            report['verification'] = verification
            if not verification['ok']:
                # A handle of its own, as before there was one: its connection waits behind dq's.
                self._vm(self.destination).quit(10)
                source.cont()
                raise MigrationError('verification failed, the destination was discarded and the source '
                                     'resumed: %s' % verification['problem'])
            destination.cont()
            report['destination_state'] = destination.status()
        report['source_state'] = self._finish_source()
        report['elapsed_s'] = round(time.monotonic() - started, 3)
        self.result['migration'] = report

    def _phase_send(self):
        src = guest_status(self.layout, self.source, registers=False)
        self.before = {'guest': self._where(src)}
        recorded = _host.read_json(self._record_path(self.source)) or {}
        if src is not None and src['state'] in ('migrated', 'stopped') and recorded.get('status') == 'completed':
            self.after = dict(self.before)
            self.result['migration'] = dict(recorded, status='already sent')
            return
        memories = self._visible_memories(self._preflight_source(src))
        self.after = {'guest': 'migrated'}
        if not self.change('migrate'):
            self.result['migration'] = {'status': 'would migrate'}
            return
        report = {'uri': self.uri, 'events': []}
        started = time.monotonic()
        with self._vm(self.source).qmp() as sq:
            self._send(sq, report, started, gate=None)
            try:
                settle_source(sq)
            except MigrationError as exc:
                self._roll_back(sq, report)
                raise MigrationError('%s; resumed it' % exc)
        if memories:
            sums, seconds = checksum_files(memories, self.checksum)
            report['source_checksums'] = [sums[path]['checksum'] for path in memories]
            report['checksum_seconds'] = round(seconds, 3)
        report['source_state'] = 'postmigrate'
        report['elapsed_s'] = round(time.monotonic() - started, 3)
        _host.write_json(self._record_path(self.source), report)
        self.result['migration'] = report

    def _phase_receive(self):
        dst = guest_status(self.layout, self.destination, registers=False)
        self.before = {'destination': self._where(dst)}
        if dst is not None and dst['state'] == 'running' and dst['record'].get('incoming'):
            self.after = dict(self.before)
            self.result['migration'] = {'status': 'already received'}
            return
        if dst is None or dst['pid'] is None or not dst['record'].get('incoming'):
            raise ValidationError('destination', 'guest %s is not a running incoming destination' % self.destination)
        devices = dst['record']['spec']['ivshmem']
        if self.verify and len(self.expected) != len(devices):
            raise ValidationError('expected_checksums', '%d given for %d ivshmem devices' % (len(self.expected), len(devices)))
        memories = [(None, path) for path in self._visible_memories(devices)]
        self.after = {'destination': 'running'}
        if not self.change('receive'):
            self.result['migration'] = {'status': 'would receive'}
            return
        destination = self._vm(self.destination)
        with destination.qmp() as dq:
            verification = self._verify_destination(dq, memories, expected=self.expected)
            if not verification['ok']:
                self._vm(self.destination).quit(10)  # a connection of its own, as before (behind dq's)
                raise MigrationError('verification failed and the destination was discarded (resume the source '
                                     'with phase abort): %s' % verification['problem'])
            destination.cont()
            state = destination.status()
        self.result['migration'] = {'status': 'received', 'verification': verification, 'destination_state': state}

    def _phase_abort(self):
        src = guest_status(self.layout, self.source, registers=False)
        self.before = {'guest': self._where(src)}
        if src is None or src['pid'] is None:
            raise ValidationError('guest', 'guest %s is not running here; nothing to resume' % self.source)
        self.after = {'guest': 'running'}
        if src['state'] == 'running':
            self.result['migration'] = {'status': 'source running'}
            return
        if self.change('resume'):
            with self._vm(self.source).qmp() as sq:
                report = {}
                self._roll_back(sq, report, discard_destination=False)
            _host.write_json(self._record_path(self.source), {'status': 'aborted'})
        self.result['migration'] = {'status': 'source resumed'}

    # --- preflight --------------------------------------------------------------------
    def _visible_memories(self, devices):
        """The host files behind the devices' memories; verifying needs every one visible here."""
        if not self.verify:
            return []
        paths = []
        for index, device in enumerate(devices):
            path = memory_path_of(self.layout, device)
            if path is None:
                raise ValidationError('verify', 'the memory of ivshmem[%d] is not visible on this host' % index)
            paths.append(path)
        return paths

    def _preflight_source(self, src):
        if src is None or src['pid'] is None:
            raise ValidationError('guest', 'guest %s is not running on this host' % self.source)
        devices = src['record']['spec']['ivshmem']
        if not devices:
            raise ValidationError('guest', 'guest %s has no ivshmem device' % self.source)
        for index, device in enumerate(devices):
            if device['role'] != 'master':
                raise ValidationError('guest', 'guest %s is a peer (ivshmem[%d]); only the master of a shared '
                                               'memory can migrate: stop or move its peers instead' % (self.source, index))
        if src['state'] != 'running':
            raise ValidationError('guest', 'guest %s is %s, not running' % (self.source, src['state']))
        blocked = src.get('migration', {}).get('blocked_reasons')
        if blocked:
            raise ValidationError('guest', 'QEMU blocks migrating %s: %s' % (self.source, '; '.join(blocked)))
        return devices

    def _preflight_destination(self, dst, devices, src):
        if dst is None or dst['pid'] is None:
            raise ValidationError('destination', 'guest %s is not prepared; start it with state incoming' % self.destination)
        if dst['state'] != 'incoming' or not dst['record'].get('incoming'):
            raise ValidationError('destination', 'guest %s is %s, not a paused incoming destination' % (
                self.destination, dst['state']))
        dst_devices = dst['record']['spec']['ivshmem']
        if [(d['type'], d['role']) for d in dst_devices] != [(d['type'], d['role']) for d in devices]:
            raise ValidationError('destination', 'guest %s has other ivshmem devices than %s' % (self.destination, self.source))
        source_type = src.get('machine_type')
        if source_type and dst.get('machine_type') and dst['machine_type'] != source_type:
            # A stream loads only into the versioned type it was sent from (pc is another type on another QEMU).
            raise ValidationError('destination', 'guest %s waits as machine type %s, but %s runs %s: a stream loads '
                                                 'only into its own type; start %s with machine: %s' % (
                                                     self.destination, dst['machine_type'], self.source, source_type,
                                                     self.destination, source_type))
        memories = []
        if self.verify:
            for index, (a, b) in enumerate(zip(devices, dst_devices)):
                pair = (memory_path_of(self.layout, a), memory_path_of(self.layout, b))
                if None in pair:
                    raise ValidationError('verify', 'the memory of ivshmem[%d] is not visible on this host '
                                                    '(server given by socket, or upstream server with memory_dir)' % index)
                if pair[0] == pair[1]:
                    raise ValidationError('destination', 'ivshmem[%d] shares one memory with the source: '
                                                         'the destination needs its own server' % index)
                memories.append(pair)
        return memories

    # --- the migration ---------------------------------------------------------------
    def _send(self, sq, report, started, gate):
        """Migrate and wait for completion; on any failure roll back and raise."""
        try:
            start_migration(sq, report['uri'], self.max_bandwidth, self.downtime_limit)
            remaining = max(1, self.timeout - (time.monotonic() - started))
            report.update(follow_migration(sq, remaining, self._write_progress, gate))
        except (QMPError, MigrationError) as exc:
            self._roll_back(sq, report, discard_destination=self.phase == 'full')
            raise MigrationError('migration of %s failed and was rolled back (the source runs): %s' % (self.source, exc))

    def _destination_waits(self, dq):
        if dq.command('query-status')['status'] != 'inmigrate':
            raise MigrationError('destination %s is no longer waiting for the migration' % self.destination)

    def _write_progress(self, info):
        _host.write_json(self._record_path(self.source), progress_of(info))

    def _roll_back(self, sq, report, discard_destination=False):
        """Cancel whatever runs, resume the source, discard a local destination."""
        try:
            report['source_state'] = cancel_and_resume(sq)
        except (QMPError, WaitTimeout) as exc:
            report['rollback_error'] = str(exc)
        if discard_destination:
            self._vm(self.destination).quit(10)

    def _finish_source(self):
        if self.stop_source:
            self._vm(self.source).quit(30)
            return 'stopped'
        return 'postmigrate'

    def _verify_destination(self, dq, memories, expected, source_qmp=None):
        """Destination paused after the migration: IVPOSITION 0 and memory equal to the source's.

        ``memories`` holds (source path or None, destination path) pairs; without a source path
        the destination is compared with ``expected`` (the checksums phase send returned).
        """
        result = {'ok': False, 'checked': bool(self.verify)}
        result['destination_load_wait_s'] = round(wait_loaded(dq, self.timeout), 3)
        if source_qmp is not None:
            source_state = source_qmp.command('query-status')['status']
            if source_state != 'postmigrate':
                result['problem'] = 'source is %s, not postmigrate' % source_state
                return result
        sources = [pair[0] for pair in memories if pair[0] is not None] if self.verify else []
        destinations = [pair[1] for pair in memories] if self.verify else []
        check = verify_destination(dq, destinations + sources, self.checksum)
        result['destination_ivposition'] = check.get('ivposition')
        result['checksum_seconds'] = check.get('checksum_seconds')
        if not check['ok']:
            result['problem'] = check['problem']
            return result
        sums = dict(zip(destinations + sources, check['checksums']))
        result['memories'] = []
        for index, (source_path, destination_path) in enumerate(memories):
            want = sums[source_path] if source_path else expected[index]
            entry = {'source': source_path, 'destination': destination_path, 'source_checksum': want,
                     'destination_checksum': sums[destination_path]}
            result['memories'].append(entry)
            if entry['source_checksum'] != entry['destination_checksum']:
                result['problem'] = 'shared memory differs: %s' % destination_path
                return result
        result['ok'] = True
        return result
