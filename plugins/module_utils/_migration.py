# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Migrating an ivshmem master, verified before the destination runs (ivshmem.fleet.migrate).

Policy on top of the QMP protocol: preflight, capabilities, the pre-switchover gate,
waiting on MIGRATION events, verification while both sides are paused, and rollback.
Nothing is lost: either the destination runs with memory proven equal and IVPOSITION 0,
or the source runs again and the destination is gone.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host
from ansible_collections.ivshmem.fleet.plugins.module_utils._checksum import checksum_files
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import guest_status, quit_guest
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import ValidationError, check_name
from ansible_collections.ivshmem.fleet.plugins.module_utils._qemu_inspect import read_ivshmem_registers
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPClient, QMPError, QMPTimeout
from ansible_collections.ivshmem.fleet.plugins.module_utils._state_machine import StateMachine
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import WaitTimeout, wait_for

FINAL = ('completed', 'failed', 'cancelled')


class MigrationError(Exception):
    """The migration did not happen; ``source_state`` tells where the group serves from."""


def memory_path_of(layout, device):
    """The host file behind a device's shared memory, or None where the host cannot see it."""
    if device['type'] == 'plain':
        return device['memory_path']
    if device.get('server'):
        record = _host.read_json(os.path.join(layout.server_dir(device['server']), 'spec.json')) or {}
        return record.get('memory_path')
    return None


class Migration(StateMachine):
    def __init__(self, params, layout, check_mode):
        super(Migration, self).__init__(check_mode)
        self.layout = layout
        self.source = check_name('guest', params['guest'])
        self.destination = check_name('destination', params['destination'])
        if self.source == self.destination:
            raise ValidationError('destination', 'must differ from guest')
        self.uri = params.get('uri')
        self.max_bandwidth = params.get('max_bandwidth')
        self.downtime_limit = params.get('downtime_limit')
        self.timeout = params.get('timeout')
        self.verify = params.get('verify')
        self.checksum = params.get('checksum')
        self.stop_source = params.get('stop_source')
        self.progress_file = os.path.join(layout.guest_dir(self.source), 'migration.json')

    # --- the one state: migrated ------------------------------------------------------
    def state_migrated(self):
        src = guest_status(self.layout, self.source, registers=False)
        dst = guest_status(self.layout, self.destination, registers=False)
        self.before = {'guest': self._where(src), 'destination': self._where(dst)}
        if dst is not None and dst['state'] == 'running' and (src is None or src['state'] in ('stopped', 'migrated')):
            # Done before: at most the stale source is left to stop.
            if src is not None and src['state'] == 'migrated' and self.stop_source and self.change('stop source'):
                quit_guest(self.layout, self.source, 30)
            self.after = {'guest': 'stopped' if src else 'absent', 'destination': 'running'}
            self.result['migration'] = {'status': 'already migrated'}
            return
        devices, memories = self._preflight(src, dst)
        self.after = {'guest': 'stopped' if self.stop_source else 'migrated', 'destination': 'running'}
        if not self.change('migrate'):
            self.result['migration'] = {'status': 'would migrate'}
            return
        self.result['migration'] = self._migrate(src, dst, devices, memories)

    @staticmethod
    def _where(status):
        return 'absent' if status is None else status['state']

    def _preflight(self, src, dst):
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
        if dst is None or dst['pid'] is None:
            raise ValidationError('destination', 'guest %s is not prepared; start it with state incoming' % self.destination)
        if dst['state'] != 'incoming' or not dst['record'].get('incoming'):
            raise ValidationError('destination', 'guest %s is %s, not a paused incoming destination' % (
                self.destination, dst['state']))
        dst_devices = dst['record']['spec']['ivshmem']
        if [(d['type'], d['role']) for d in dst_devices] != [(d['type'], d['role']) for d in devices]:
            raise ValidationError('destination', 'guest %s has other ivshmem devices than %s' % (self.destination, self.source))
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
        return devices, memories

    # --- the migration ---------------------------------------------------------------
    def _migrate(self, src, dst, devices, memories):
        uri = self.uri or dst['incoming_uri']
        report = {'uri': uri, 'events': []}
        started = time.monotonic()
        with QMPClient(src['qmp'], timeout=30) as sq, QMPClient(dst['qmp'], timeout=30) as dq:
            try:
                sq.command('migrate-set-capabilities', {'capabilities': [
                    {'capability': 'events', 'state': True},
                    {'capability': 'pause-before-switchover', 'state': True}]})
                sq.command('migrate-set-parameters', {'max-bandwidth': self.max_bandwidth,
                                                      'downtime-limit': self.downtime_limit})
                sq.command('migrate', {'uri': uri})
                self._follow(sq, dq, started, report)
            except (QMPError, MigrationError) as exc:
                self._roll_back(sq, report)
                raise MigrationError('migration of %s to %s failed and was rolled back (the source runs): %s' % (
                    self.source, self.destination, exc))
            info = sq.command('query-migrate')
            report.update(status=info['status'], total_time_ms=info.get('total-time'), downtime_ms=info.get('downtime'),
                          setup_time_ms=info.get('setup-time'), ram=info.get('ram', {}))
            verification = self._verify(sq, dq, memories)
            report['verification'] = verification
            if not verification['ok']:
                self._undo_completed(sq)
                raise MigrationError('verification failed, the destination was discarded and the source resumed: %s'
                                     % verification['problem'])
            dq.command('cont')
            report['destination_state'] = dq.command('query-status')['status']
        if self.stop_source:
            quit_guest(self.layout, self.source, 30)
            report['source_state'] = 'stopped'
        else:
            report['source_state'] = 'postmigrate'
        report['elapsed_s'] = round(time.monotonic() - started, 3)
        return report

    def _follow(self, sq, dq, started, report):
        """Wait on MIGRATION events until completed; open the switchover gate on the way."""
        while True:
            remaining = self.timeout - (time.monotonic() - started)
            if remaining <= 0:
                raise MigrationError('no completion within %d s' % self.timeout)
            try:
                event = sq.wait_event(('MIGRATION', 'MIGRATION_PASS'), remaining)
            except QMPTimeout:
                raise MigrationError('no completion within %d s' % self.timeout)
            if event['event'] == 'MIGRATION_PASS':
                self._write_progress(sq.command('query-migrate'))
                continue
            status = event['data']['status']
            report['events'].append({'status': status, 'at_ms': int((time.monotonic() - started) * 1000)})
            if status == 'pre-switchover':
                # Last look before committing: the destination must still be waiting.
                if dq.command('query-status')['status'] != 'inmigrate':
                    raise MigrationError('destination %s is no longer waiting for the migration' % self.destination)
                sq.command('migrate-continue', {'state': 'pre-switchover'})
            elif status == 'completed':
                self._write_progress(sq.command('query-migrate'))
                return
            elif status in ('failed', 'cancelled'):
                info = sq.command('query-migrate')
                raise MigrationError(info.get('error-desc') or 'migration %s' % status)

    def _write_progress(self, info):
        ram = info.get('ram', {})
        total = ram.get('total') or 0
        _host.write_json(self.progress_file, {
            'status': info.get('status'), 'total_time_ms': info.get('total-time'),
            'remaining_bytes': ram.get('remaining'), 'transferred_bytes': ram.get('transferred'),
            'percent': round(100.0 * (total - (ram.get('remaining') or 0)) / total, 1) if total else None})

    def _roll_back(self, sq, report):
        """Cancel whatever runs, resume the source, discard the destination."""
        try:
            status = sq.command('query-migrate').get('status')
            if status not in FINAL + ('none',):
                sq.command('migrate_cancel')
                wait_for('the migration to stop', lambda: sq.command('query-migrate').get('status') in FINAL + ('none',), 30)
            if sq.command('query-status')['status'] != 'running':
                sq.command('cont')
            report['source_state'] = sq.command('query-status')['status']
        except (QMPError, WaitTimeout) as exc:
            report['rollback_error'] = str(exc)
        quit_guest(self.layout, self.destination, 10)

    def _undo_completed(self, sq):
        quit_guest(self.layout, self.destination, 10)
        sq.command('cont')

    def _verify(self, sq, dq, memories):
        """Both sides paused: compare the shared memory and read the destination's IVPOSITION."""
        result = {'ok': False, 'checked': bool(self.verify)}
        _value, waited = wait_for('the destination to finish loading',
                                  lambda: dq.command('query-status')['status'] != 'inmigrate', 30)
        result['destination_load_wait_s'] = round(waited, 3)
        states = {'source': sq.command('query-status')['status'], 'destination': dq.command('query-status')['status']}
        result['states'] = states
        if states['source'] != 'postmigrate' or states['destination'] not in ('paused', 'prelaunch'):
            result['problem'] = 'unexpected run states %s (source must be postmigrate, destination paused)' % states
            return result
        positions = dict((k, v['ivposition']) for k, v in read_ivshmem_registers(dq).items())
        result['destination_ivposition'] = positions
        if any(position != 0 for position in positions.values()):
            result['problem'] = 'destination IVPOSITION %s, expected 0 for the master' % positions
            return result
        if self.verify:
            paths = [path for pair in memories for path in pair]
            sums, seconds = checksum_files(paths, self.checksum)
            result['checksum_seconds'] = round(seconds, 3)
            result['memories'] = []
            for source_path, destination_path in memories:
                entry = {'source': source_path, 'destination': destination_path,
                         'source_checksum': sums[source_path]['checksum'],
                         'destination_checksum': sums[destination_path]['checksum'],
                         'size': sums[source_path]['size']}
                result['memories'].append(entry)
                if entry['source_checksum'] != entry['destination_checksum'] or \
                        sums[source_path]['size'] != sums[destination_path]['size']:
                    result['problem'] = 'shared memory differs: %s vs %s' % (source_path, destination_path)
                    return result
        result['ok'] = True
        return result
