# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The host side of a group move (ivshmem.fleet.move_host): the journal, the lock, the steps.

Each host keeps one record per group in ``<runtime_dir>/moves/<group>.json``: which run holds
the group (the lock, with a lease), and the journal step reached. A step writes its journal
entry *before* it acts and is idempotent, so a step cut at any point (controller killed,
connection lost) is resolved by running the move again. The decisions (finish the move or roll
it back) are the engine's (_move_engine.py); the host side only does and records.

Journal steps on the destination: prepared -> loaded -> verified -> running -> done.
On the source: [unplugging -> unplugged ->] sending -> sent -> committing -> done. ``verified``
is written before the destination continues, ``committing`` before the engine asks it to:
without ``committing`` on the source the destination never ran, so the source may always be
resumed. Peers moved live (``live_peers``) keep running: unplugged on the source before the
master moves, migrated one by one once it runs on the destination, plugged back there.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fcntl
import os
import threading
import time
from contextlib import contextmanager

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host, _qemu_binary, _readiness, _tls
from ansible_collections.ivshmem.fleet.plugins.module_utils._checksum import checksum_files
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import (
    GuestError, GuestManager, exit_log, guest_status, plug_devices, unplug_devices)
from ansible_collections.ivshmem.fleet.plugins.module_utils._hotplug import HotplugError
from ansible_collections.ivshmem.fleet.plugins.module_utils._migration import (
    MigrationError, cancel_and_resume, finish_started_migration, follow_migration, progress_of, settle_source,
    start_migration, verify_destination, wait_loaded)
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import ValidationError, check_name
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import DEFAULT_QEMU, MIGRATION_DEFAULTS, MOVE_DEFAULTS
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPClient, QMPError, event_seconds
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import ServerManager, server_status
from ansible_collections.ivshmem.fleet.plugins.module_utils._state_machine import StateMachine
from ansible_collections.ivshmem.fleet.plugins.module_utils._verify_channel import ChannelError, Listener, exchange
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import WaitTimeout

# Journal steps from which a destination may be discarded, and a source resumed.
DISCARDABLE = ('preparing', 'prepared', 'loaded', 'discarding')
RESUMABLE = ('unplugging', 'unplugged', 'sending', 'sent', 'committing', 'resuming')
STEPS = ('inspect', 'claim', 'mark', 'progress', 'prepare_destination', 'unplug_peers', 'send', 'verify', 'commit',
         'prepare_peer', 'send_peer', 'plug_peer', 'finish_source', 'rollback_source', 'rollback_destination',
         'release')
# A record whose step is one of these holds no lock.
FINISHED = ('done',)


class MoveError(Exception):
    """A step could not do what it was asked; the message says what and where the group is."""


def moves_dir(layout):
    return os.path.join(layout.runtime_dir, 'moves')


def journal_path(layout, group):
    return os.path.join(moves_dir(layout), '%s.json' % group)


def read_journal(layout, group):
    return _host.read_json(journal_path(layout, group))


def transitions(layout):
    """{group: record} of every unfinished move on this host (for ivshmem.fleet.info)."""
    found = {}
    for name in layout.names('moves'):
        if name.endswith('.json'):
            record = _host.read_json(os.path.join(moves_dir(layout), name))
            if record and record.get('step') not in FINISHED:
                found[name[:-5]] = record
    return found


class HostMove:
    """One host's part in moving one group. ``params`` as ivshmem.fleet.move_host takes them."""

    def __init__(self, params, layout):
        self.layout = layout
        self.params = params
        self.group = params.get('group') or {}
        if not isinstance(self.group, dict) or not isinstance(self.group.get('master'), dict) or \
                'name' not in self.group['master'] or not isinstance(self.group.get('server'), dict) or \
                not isinstance(self.group.get('peers') or [], list):
            raise ValidationError('group', 'must be one group as ivshmem.fleet.plan returns it (name, server, '
                                           'master, peers, ...)')
        # Guest options that differ on this host (its QEMU elsewhere, say), as for the server.
        overrides = params.get('guest_overrides') or {}
        if not isinstance(overrides, dict):
            raise ValidationError('guest_overrides', 'must be a mapping of guest options')
        if overrides:
            self.group = dict(self.group, master=dict(self.group['master'], **overrides),
                              peers=[dict(peer, **overrides) for peer in self.group.get('peers') or []])
        self.name = check_name('group.name', self.group.get('name'))
        self.run_id = check_name('run_id', params.get('run_id'))
        self.step = params.get('step')
        if self.step not in STEPS:
            raise ValidationError('step', 'must be one of %s' % ', '.join(STEPS))
        self.master = self.group['master']['name']
        self.peers = [peer['name'] for peer in self.group.get('peers') or []]
        # The peers this move keeps running (moved live); the others are paused and restarted.
        self.live = [name for name in params.get('live_peers') or [] if name in self.peers]
        self.server = dict(self.group['server'], **(params.get('server_overrides') or {}))
        self.start_timeout = params.get('start_timeout') or MOVE_DEFAULTS['start_timeout']
        self.path = journal_path(layout, self.name)
        # {'dir': this host's credentials, 'peer': the other host}, or None for a stream in clear.
        self.tls = _tls.check_settings('tls', params.get('tls'))

    def run(self):
        beat = None
        if self.step in ('send', 'verify', 'send_peer'):
            beat = _Heartbeat(self.renew, 10.0)
        try:
            result = getattr(self, '_step_' + self.step)() or {}
        finally:
            if beat is not None:
                beat.stop()
        result['host_time'] = time.time()
        return result

    # --- journal and lock ---------------------------------------------------------------
    @contextmanager
    def _locked(self):
        """Serializes read-modify-write of the records on this host (held for one step only)."""
        _host.ensure_dir(moves_dir(self.layout), 0o700)
        with open(os.path.join(moves_dir(self.layout), '.lock'), 'a') as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _record(self):
        return read_journal(self.layout, self.name)

    def _write(self, step, allowed_from=None, **data):
        """Journal ``step`` for this run (renews the lease). Refuses if another run took the group,
        or, with ``allowed_from``, if the journal moved on to another step meanwhile (the
        compare-and-swap that lets only one of a commit and a discard win)."""
        with self._locked():
            return self._write_locked(step, data, allowed_from=allowed_from)

    def _my_step(self):
        record = self._record() or {}
        return record.get('step') if record.get('run_id') == self.run_id else None

    def _write_locked(self, step, data, takeover=False, allowed_from=None):
        record = self._record() or {}
        if not takeover and record.get('run_id') not in (None, self.run_id) and record.get('step') not in FINISHED:
            raise MoveError('group %s is now held by run %s (%s)' % (
                self.name, record.get('run_id'), _holder_text(record.get('holder'))))
        if allowed_from is not None and record.get('step') not in allowed_from:
            raise MoveError('group %s: the journal here is at step %s, so %s is refused' % (
                self.name, record.get('step'), step))
        now = time.time()
        history = list(record.get('history') or []) if record.get('run_id') == self.run_id else []
        if record.get('step') != step or not history:
            history.append([step, round(now, 3)])
        record.update(data, run_id=self.run_id, step=step, history=history, updated=now,
                      lease_until=now + (self.params.get('lease') or MOVE_DEFAULTS['lease']))
        for key in ('holder', 'role', 'source', 'destination'):
            if self.params.get(key) is not None and not (takeover and record.get('taken_over')):
                record[key] = self.params[key]
        _host.write_json(self.path, record, 0o600)
        return record

    def renew(self):
        """Renew this run's lease without changing the step (long steps call it every few seconds)."""
        with self._locked():
            record = self._record() or {}
            if record.get('run_id') == self.run_id and record.get('step') not in FINISHED:
                record['lease_until'] = time.time() + (self.params.get('lease') or MOVE_DEFAULTS['lease'])
                _host.write_json(self.path, record, 0o600)

    # --- what runs here ---------------------------------------------------------------
    def _state(self):
        guests, machines = {}, {}
        for name in [self.master] + self.peers:
            status = guest_status(self.layout, name, registers=False)
            guests[name] = 'absent' if status is None else status['state']
            if status is not None and status['pid'] is not None and status.get('machine_type'):
                machines[name] = status['machine_type']
        server = server_status(self.layout, self.name)
        return {'guests': guests, 'server': 'absent' if server is None else server['state'], 'machines': machines}

    def _qemu(self):
        """({guest: its QEMU binary here}, {binary: what it offers}) for the preflight."""
        binaries = dict((guest['name'], guest.get('binary') or DEFAULT_QEMU)
                        for guest in [self.group['master']] + list(self.group.get('peers') or []))
        directory = _qemu_binary.cache_dir(self.layout)
        offers = {}
        for binary in sorted(set(binaries.values())):
            try:
                offers[binary] = _qemu_binary.capabilities(binary, directory)
            except _host.HostError as exc:
                offers[binary] = {'binary': binary, 'present': True, 'error': str(exc)}
        return binaries, offers

    def _step_inspect(self):
        record = self._record()
        if record:
            record['lease_expired'] = time.time() > record.get('lease_until', 0)
        return self._view(record)

    def _view(self, record):
        """What the engine decides on: the journal, what runs here, the TLS credentials lacking."""
        binaries, offers = self._qemu()
        return {'record': record, 'state': self._state(), 'binaries': binaries, 'qemu': offers,
                'tls_missing': _tls.missing(self.tls['dir']) if self.tls else [], 'ports_taken': self._ports_taken()}

    def _ports_taken(self):
        """The destination's ports of this move (the stream's and the verification channel's, the
        next one) that some process listens on already; a move would fail on them half-way."""
        uri = self.params.get('uri') or ''
        if self.params.get('role') != 'destination' or not uri.startswith('tcp:'):
            return []
        try:
            port = int(uri.rsplit(':', 1)[1])
        except ValueError:
            return []
        return [p for p in (port, port + 1) if _host.tcp_listening(p)]

    def _step_claim(self):
        """Take the group's lock for this run: compare-and-swap against the run the engine saw."""
        expect = self.params.get('expect_run')
        with self._locked():
            record = self._record() or {}
            held = record.get('run_id') not in (None, self.run_id) and record.get('step') not in FINISHED
            if held and record.get('run_id') != expect and not self.params.get('force'):
                raise MoveError('group %s is held by run %s (%s), step %s' % (
                    self.name, record.get('run_id'), _holder_text(record.get('holder')), record.get('step')))
            if held:
                # Taken over from a dead run: keep its step and data for the engine to resolve.
                data = dict((k, v) for k, v in record.items() if k not in ('run_id', 'history', 'holder', 'step'))
                # Its hosts and roles stay as they were: the move is resolved between them.
                data['taken_over'] = dict((k, record.get(k)) for k in (
                    'run_id', 'step', 'holder', 'source', 'destination', 'role'))
                step = record.get('step')
            elif record.get('run_id') == self.run_id:
                data, step = {}, record.get('step')
            else:
                data, step = {'taken_over': None}, 'claimed'
                for key in ('sent', 'verification', 'resumed_at', 'peers_running_at', 'peers_stopped_at',
                            'progress', 'outcome', 'uri', 'live_peers', 'fallback', 'peers_unplugged_at',
                            'peers_sent', 'peers_plugged'):
                    record.pop(key, None)
                _host.write_json(self.path, record, 0o600)
            record = self._write_locked(step, data, takeover=True)
        return self._view(record)

    def _step_mark(self):
        return {'record': self._write(self.params['mark'])}

    def _step_progress(self):
        record = self._record() or {}
        return {'progress': record.get('progress'), 'step': record.get('step')}

    def _step_release(self):
        record = self._record()
        if record is not None and record.get('run_id') == self.run_id:
            record = self._write('done', outcome=self.params.get('outcome'))
        return {'record': record}

    # --- the destination ----------------------------------------------------------------
    def _guest(self, params, state, **extra):
        return GuestManager(dict(params, timeout=self.start_timeout, **extra), self.layout, False).run(state)

    def _server_manager(self, **extra):
        return ServerManager(dict(self.server, timeout=self.start_timeout, **extra), self.layout, False)

    def _builtin(self):
        return self.server.get('implementation', 'builtin') == 'builtin'

    def _step_prepare_destination(self):
        """A fresh server admitting only the master, which waits paused for the stream at ID 0."""
        state = self._state()
        serving = [name for name, where in state['guests'].items() if where in ('running', 'paused', 'migrated')]
        record = self._record() or {}
        if record.get('run_id') == self.run_id and record.get('step') == 'prepared' and \
                state['guests'][self.master] == 'incoming':
            return {'record': record}
        if serving:
            raise MoveError('destination runs %s of group %s already; it cannot receive the group' % (
                ', '.join(sorted(serving)), self.name))
        self._write('preparing')
        GuestManager(dict(name=self.master, timeout=30), self.layout, False).run('absent')
        hold = dict(admission='held', hold_for=self.master) if self._builtin() else {}
        self._server_manager(**hold).run('restarted')
        uri = self.params['uri']
        guest = self._guest(self.group['master'], 'incoming', incoming_uri=uri, incoming_tls=self.tls,
                            incoming_in_clear=self.tls is None)['guest']
        master_id = guest['ivshmem'][0].get('server_id')
        if self._builtin() and master_id != 0:
            raise MoveError('the destination master has ID %s, not 0, on the fresh server' % master_id)
        return {'record': self._write('prepared', uri=uri), 'master_id': master_id}

    def _step_verify(self):
        """Wait until the stream is loaded; IVPOSITION 0 and the memory's checksum, still paused.

        With a channel key, the destination also takes the source's checksums straight from the
        source and, when they match, continues at once (see _verify_channel.py).
        """
        record = self._record() or {}
        key = self.params.get('channel_key')
        if record.get('run_id') == self.run_id and record.get('step') in ('verified', 'running'):
            return {'record': self._commit(None) if key else record}
        listener = Listener(self.params['uri'], key, self.run_id) if key else None
        try:
            if not (record.get('run_id') == self.run_id and record.get('step') == 'loaded'):
                record = self._load_and_check()
            if listener is None:
                return {'record': record}
            message = listener.receive(self.params.get('checksum_timeout') or 60)
            mine = record['verification']['checksums']
            if message.get('checksums') != mine:
                listener.answer({'ok': False, 'why': 'destination has %s' % mine})
                raise MoveError('shared memory differs after the migration: source %s, destination %s' % (
                    message.get('checksums'), mine))
            return {'record': self._commit(mine, answer=listener.answer)}
        except ChannelError as exc:
            raise MoveError('verification channel: %s' % exc)
        finally:
            if listener is not None:
                listener.close()

    def _exited(self, name):
        """Why guest ``name``'s QEMU here stopped on its own (its last log lines), as a sentence."""
        said = exit_log(self.layout, name)
        return 'its QEMU exited: %s' % said if said else 'it is not running'

    def _load_and_check(self):
        status = guest_status(self.layout, self.master, registers=False)
        if status is None or status['pid'] is None:
            raise MoveError('the destination master %s did not receive the stream: %s' % (
                self.master, self._exited(self.master)))
        timeout = self.params.get('timeout') or 300
        try:
            with QMPClient(status['qmp'], timeout=30) as dq:
                waited = wait_loaded(dq, timeout)
                check = verify_destination(dq, self._memories(), self.params.get('checksum') or MIGRATION_DEFAULTS['checksum'])
        except QMPError as exc:
            said = exit_log(self.layout, self.master)
            if said is None:
                raise
            # The destination refused the stream (another machine type, say): its own words.
            raise MoveError('the destination master %s refused the stream: its QEMU exited: %s' % (self.master, said))
        if check['ok'] and self._builtin():
            # IVPOSITION keeps the ID the master got at its start: only the server can say it still
            # serves the master as ID 0 (a server restarted under it strands it, memory or not).
            held = (guest_status(self.layout, self.master, registers=False) or {}).get('ivshmem') or [{}]
            if held[0].get('server_id') != 0:
                check.update(ok=False, problem='the destination server does not serve the master as ID 0 (it has ID '
                                               '%s there: the server restarted under it?)' % held[0].get('server_id'))
        if not check['ok']:
            raise MoveError('destination check failed: %s' % check['problem'])
        check['load_wait_s'] = round(waited, 3)
        return self._write('loaded', allowed_from=('prepared', 'loaded'), verification=check)

    def _step_commit(self):
        """Run the verified destination: checksums equal to the source's, then cont, then the peers."""
        return {'record': self._commit(self.params.get('expected_checksums'))}

    def _commit(self, expected, answer=None):
        record = self._record() or {}
        mine = record.get('run_id') == self.run_id
        if not mine or record.get('step') not in ('loaded', 'verified', 'running'):
            raise MoveError('the destination was not verified by this run (step %s)' % record.get('step'))
        status = guest_status(self.layout, self.master, registers=False)
        if status is None or status['pid'] is None:
            raise MoveError('the destination master %s is gone' % self.master)
        if record['step'] == 'loaded':
            got = record['verification']['checksums']
            if got != (expected or []):
                raise MoveError('shared memory differs: destination %s, source %s' % (got, expected))
            # Only one of this and a discard can win (both swap from loaded under the lock).
            record = self._write('verified', allowed_from=('loaded',))
        resumed_at = record.get('resumed_at')
        if status['state'] != 'running':
            with QMPClient(status['qmp'], timeout=30) as dq:
                dq.command('cont')
                resumed_at = _event_time(dq, 'RESUME')
            record = self._write('verified', resumed_at=resumed_at)
        if answer is not None:
            answer({'ok': True, 'resumed_at': resumed_at})
        if self._builtin():
            self._server_manager().run('started')  # admission opens for the peers
        started = self._start_peers([p for p in self.group.get('peers') or [] if p['name'] not in self.live])
        peers_running_at = max(started.values()) if started else record.get('peers_running_at')
        return self._write('running', resumed_at=resumed_at, peers_running_at=peers_running_at)

    def _start_peers(self, peers):
        """Start ``peers`` here, with their pinned IDs: all at once when pinned, else in order."""
        ids = self.group.get('ids') or {}
        started, errors = {}, []

        def start(peer):
            try:
                result = self._guest(peer, 'running')
            except Exception as exc:  # pylint: disable=broad-except  # reported below, per peer
                errors.append('%s: %s' % (peer['name'], exc))
                return
            if result['changed']:
                started[peer['name']] = time.time()
            have, want = result['guest']['ivshmem'][0].get('server_id'), ids.get(peer['name'])
            if want is not None and have != want:
                errors.append('peer %s has ID %s on the destination, not its pinned %s' % (peer['name'], have, want))

        if ids and self._builtin():
            threads = [threading.Thread(target=start, args=(peer,)) for peer in peers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for peer in peers:
                start(peer)
        if errors:
            raise MoveError('; '.join(errors))
        return started

    def _step_rollback_destination(self):
        """Nothing of this move left here. Only what this move prepared here is discarded: a host
        whose journal never reached ``preparing`` in this move keeps whatever runs on it."""
        step = self._my_step()
        force = self.params.get('force')
        if step in ('verified', 'running') and not force:
            raise MoveError('the destination was verified and may run; it is not discarded')
        if step not in DISCARDABLE and not force:
            if step is not None:
                self._write('done', outcome=self.params.get('outcome') or 'nothing to discard')
            return {'discarded': False}
        self._write('discarding', allowed_from=None if force else DISCARDABLE)
        # What a QEMU that stopped on its own said, kept before its directory goes.
        exited = dict((name, exit_log(self.layout, name)) for name in [self.master] + self.peers)
        exited = dict((name, said) for name, said in exited.items() if said)
        self._remove_group_here()
        self._write('done', outcome=self.params.get('outcome') or 'rolled back', exited=exited)
        return {'discarded': True, 'exited': exited}

    # --- the source ---------------------------------------------------------------------
    def _tls_for(self, status):
        """This move's TLS settings for the QEMU of ``status`` (it loads the credentials as its account)."""
        return _tls.for_guest(self.tls, status['record']['spec']['user'], self.layout.runtime_dir)

    def _memories(self):
        path = (server_status(self.layout, self.name) or {}).get('memory')
        if not path:
            raise MoveError('the memory of server %s is not visible on this host; it cannot be verified' % self.name)
        return [path]

    def _step_send(self):
        """Pause the peers, migrate the master, hash the paused source. Fails back to running."""
        record = self._record() or {}
        status = guest_status(self.layout, self.master, registers=False)
        if record.get('run_id') == self.run_id and record.get('step') in ('sent', 'committing') and \
                status is not None and status['state'] == 'migrated':
            return {'record': record}
        if status is None or status['state'] != 'running':
            raise MoveError('the master %s is %s here, not running' % (
                self.master, 'absent' if status is None else status['state']))
        memories = self._memories()
        self._write('sending')
        peers_stopped_at = None
        try:
            for name in self.peers:
                if name in self.live:
                    continue  # unplugged, it keeps running: it migrates after the master
                peer = guest_status(self.layout, name, registers=False)
                if peer is not None and peer['state'] == 'running':
                    with QMPClient(peer['qmp'], timeout=30) as pq:
                        pq.command('stop')
                        at = _event_time(pq, 'STOP')
                    if at is not None:
                        peers_stopped_at = min(at, peers_stopped_at or at)
            self._write('sending', peers_stopped_at=peers_stopped_at)
            hashing = _Background(checksum_files, memories, self.params.get('checksum') or MIGRATION_DEFAULTS['checksum'])
            with QMPClient(status['qmp'], timeout=30) as sq:
                start_migration(sq, self.params['uri'], self.params.get('max_bandwidth') or MIGRATION_DEFAULTS['max_bandwidth'],
                                self.params.get('downtime_limit') or MIGRATION_DEFAULTS['downtime_limit'], self._tls_for(status))
                # At the switchover gate the master and its peers are stopped: the memory is final,
                # so it is hashed while the last pass runs, not after it.
                report = follow_migration(sq, self.params.get('timeout') or 300,
                                          lambda info: self._write('sending', progress=progress_of(info)),
                                          gate=hashing.start)
                settle_source(sq)
        except (MigrationError, QMPError) as exc:
            self._resume_source()
            self._write('done', outcome='rolled back: %s' % exc)
            raise MoveError('migration failed and the group runs here again: %s' % exc)
        sums, seconds = hashing.result()
        report['checksums'] = [sums[path]['checksum'] for path in memories]
        report['peers_stopped_at'] = peers_stopped_at
        report['checksum_seconds'] = round(seconds, 3)
        key = self.params.get('channel_key')
        if not key:
            return {'record': self._write('sent', sent=report)}
        # From here on the destination may run: journal that before the checksums leave.
        self._write('committing', sent=report)
        try:
            verdict = exchange(self.params['uri'], key, self.run_id,
                               {'checksums': report['checksums'], 'stopped_at': report.get('stopped_at')},
                               self.params.get('checksum_timeout') or 60)
        except ChannelError as exc:
            report['channel'] = 'no verdict: %s' % exc
            return {'record': self._write('committing', sent=report)}
        if verdict['ok'] is False:  # said explicitly by the destination (exchange checks it is a bool)
            # The destination refused and never ran: resume here at once.
            self._resume_source()
            self._write('done', outcome='rolled back: the destination refused: %s' % verdict.get('why'))
            raise MoveError('shared memory differs after the migration (%s); the group runs here again' % verdict.get('why'))
        report['channel'] = 'verified by the destination'
        return {'record': self._write('committing', sent=report)}

    def _resume_source(self):
        """Master and peers running here again, whatever the migration left."""
        status = guest_status(self.layout, self.master, registers=False)
        if status is not None and status['pid'] is not None:
            with QMPClient(status['qmp'], timeout=30) as sq:
                cancel_and_resume(sq)
        elif status is None or status['pid'] is None:
            self._guest(self.group['master'], 'running')
        for peer in self.group.get('peers') or []:
            self._guest(peer, 'running')

    def _step_rollback_source(self):
        """The group running here again. Only a host that began sending in this move is touched."""
        step = self._my_step()
        if step == 'committing' and not self.params.get('force'):
            raise MoveError('the destination may already run the group (journal step committing); '
                            'the source stays paused until the destination is resolved')
        if step not in RESUMABLE:
            if step is not None:
                self._write('done', outcome=self.params.get('outcome') or 'nothing to resume')
            return {'state': self._state(), 'resumed': False}
        self._write('resuming')
        self._resume_source()
        self._write('done', outcome=self.params.get('outcome') or 'rolled back')
        return {'state': self._state(), 'resumed': True}

    def _remove_group_here(self):
        for name in self.peers + [self.master]:
            GuestManager(dict(name=name, timeout=30), self.layout, False).run('absent')
        self._server_manager().run('absent')

    def _step_finish_source(self):
        """The group runs on the destination: nothing of it left here. A peer moved live that
        still runs here has not reached the destination yet: it is never removed."""
        for name in self.live:
            status = guest_status(self.layout, name, registers=False)
            if status is not None and status['pid'] is not None and status['state'] != 'migrated':
                raise MoveError('peer %s still runs here (%s): it has not moved yet, so the source is kept' % (
                    name, status['state']))
        self._write('finishing')
        self._remove_group_here()
        return {'record': self._write('done', outcome='moved')}

    # --- peers moved live -------------------------------------------------------------
    def _live_peer(self):
        name = self.params.get('peer')
        if name not in self.live:
            raise ValidationError('peer', '%r is not a peer this move keeps running (live_peers)' % (name,))
        return next(p for p in self.group['peers'] if p['name'] == name)

    def _step_unplug_peers(self):
        """Source: each live peer's device unplugged; the guests release it and keep running.

        A guest that does not release its device fails the step (the engine plugs back the
        others and resumes the group here), unless the group falls back to restarting it: it is
        then paused and restarted on the destination like a peer of ``peer_mode: restart``."""
        record = self._record() or {}
        if record.get('run_id') == self.run_id and record.get('step') in ('unplugged', 'sending', 'sent', 'committing'):
            return {'record': record}
        released = dict(record.get('peers_unplugged_at') or {}) if record.get('run_id') == self.run_id else {}
        live, fallback = list(self.live), {}
        self._write('unplugging', live_peers=live, peers_unplugged_at=released)
        timeout = self.group.get('peer_unplug_timeout') or 30
        for name in self.live:
            try:
                at = unplug_devices(self.layout, name, timeout)
            except (HotplugError, GuestError) as exc:
                if self.group.get('peer_fallback') != 'restart':
                    raise MoveError(str(exc))
                live.remove(name)  # restarted on the destination instead, as the group allows
                fallback[name] = str(exc)
                self._write('unplugging', live_peers=live, fallback=fallback)
                continue
            stamps = [stamp for stamp in at.values() if stamp is not None]
            released[name] = min(stamps) if stamps else released.get(name) or time.time()
            self._write('unplugging', peers_unplugged_at=released)
        return {'record': self._write('unplugged', live_peers=live, peers_unplugged_at=released)}

    def _step_prepare_peer(self):
        """Destination: the live peer started without its device, waiting for its stream (over
        TLS from the source), unless it already arrived."""
        peer = self._live_peer()
        status = guest_status(self.layout, peer['name'], registers=False)
        if status is not None and status['pid'] is not None and status['state'] in ('incoming', 'paused', 'running'):
            return {'peer_state': status['state']}
        GuestManager(dict(name=peer['name'], timeout=30), self.layout, False).run('absent')
        devices = ['ivshmem%d' % index for index in range(len(peer.get('ivshmem') or []))]
        self._guest(peer, 'incoming', incoming_uri=self.params['uri'], incoming_tls=self.tls,
                    incoming_in_clear=self.tls is None, unplugged=devices)
        return {'peer_state': 'incoming'}

    def _step_send_peer(self):
        """Source: migrate the live peer; it runs until its switchover. Fails back to running here."""
        name = self._live_peer()['name']
        record = self._record() or {}
        sent = dict(record.get('peers_sent') or {})
        status = guest_status(self.layout, name, registers=False)
        if status is not None and status['state'] == 'migrated':
            return {'sent': sent.get(name) or {}}
        if status is None or status['pid'] is None:
            raise MoveError('peer %s is %s here, not running' % (name, 'absent' if status is None else status['state']))
        with QMPClient(status['qmp'], timeout=30) as pq:
            try:
                # A step cut mid-migration left it running in QEMU: finish that one.
                report = finish_started_migration(pq, self.params.get('timeout') or 300)
                if report is None:
                    if pq.command('query-status')['status'] != 'running':
                        raise MoveError('peer %s is %s here, not running' % (name, status['state']))
                    start_migration(pq, self.params['uri'], self.params.get('max_bandwidth') or MIGRATION_DEFAULTS['max_bandwidth'],
                                    self.params.get('downtime_limit') or MIGRATION_DEFAULTS['downtime_limit'], self._tls_for(status))
                    report = follow_migration(pq, self.params.get('timeout') or 300)
            except (MigrationError, QMPError) as exc:
                try:
                    cancel_and_resume(pq)
                except QMPError:
                    pass
                raise MoveError('peer %s did not migrate (%s); it keeps running here' % (name, exc))
        report.pop('events', None)
        sent[name] = report
        self._write(record.get('step') or 'committing', peers_sent=sent)
        return {'sent': report}

    def _step_plug_peer(self):
        """Destination: the migrated peer runs, its device plugged back with its pinned ID, and
        IVPOSITION read back from the device before the peer counts as moved."""
        name = self._live_peer()['name']
        status = guest_status(self.layout, name, registers=False)
        if status is None or status['pid'] is None:
            raise MoveError('peer %s is not running here; its migration did not arrive' % name)
        resumed_at = None
        with QMPClient(status['qmp'], timeout=30) as dq:
            wait_loaded(dq, self.params.get('timeout') or 300)
            if dq.command('query-status')['status'] != 'running':
                dq.command('cont')
                resumed_at = _event_time(dq, 'RESUME')
        try:
            plugged = plug_devices(self.layout, name)
            _value, _waited = _readiness.wait('bars_assigned', self.start_timeout, status['qmp'])
        except (GuestError, WaitTimeout) as exc:
            raise MoveError('peer %s runs here but its device is not back: %s' % (name, exc))
        device = guest_status(self.layout, name)['ivshmem'][0]
        want = (self.group.get('ids') or {}).get(name)
        if self._builtin() and want is not None and device.get('server_id') != want:
            raise MoveError('peer %s has ID %s on the destination, not its pinned %s' % (name, device.get('server_id'), want))
        if device.get('server_id') is not None and device.get('ivposition') != device.get('server_id'):
            raise MoveError('peer %s reads IVPOSITION %s, but the server gave it ID %s' % (
                name, device.get('ivposition'), device.get('server_id')))
        record = self._record() or {}
        done = dict(record.get('peers_plugged') or {})
        done[name] = dict(done.get(name) or {}, id=device.get('server_id'), ivposition=device.get('ivposition'),
                          plugged_at=min(plugged.values()) if plugged else (done.get(name) or {}).get('plugged_at'))
        if resumed_at is not None:
            done[name]['resumed_at'] = resumed_at
        return {'record': self._write(record.get('step') or 'running', peers_plugged=done), 'peer': done[name]}


class _Heartbeat:
    """Calls ``beat`` every ``interval`` seconds in a thread until stopped."""

    def __init__(self, beat, interval):
        self._stop = threading.Event()

        def run():
            while not self._stop.wait(interval):
                try:
                    beat()
                except Exception:  # pylint: disable=broad-except  # a missed renewal is retried
                    pass
        self._thread = threading.Thread(target=run)
        self._thread.daemon = True
        self._thread.start()

    def stop(self):
        self._stop.set()


class _Background:
    """A call started later in a thread (``start``); ``result`` waits for it, or runs it now."""

    def __init__(self, function, *args):
        self.function, self.args = function, args
        self.thread, self.value, self.error = None, None, None

    def start(self):
        def run():
            try:
                self.value = self.function(*self.args)
            except Exception as exc:  # pylint: disable=broad-except  # re-raised by result()
                self.error = exc
        self.thread = threading.Thread(target=run)
        self.thread.daemon = True
        self.thread.start()

    def result(self):
        if self.thread is None:
            return self.function(*self.args)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def _event_time(qmp, name, timeout=5.0):
    """The host wall-clock time QEMU stamped on event ``name`` (seconds, float); None when the
    event did not come (the outage is then reported unknown, never guessed)."""
    try:
        return event_seconds(qmp.wait_event((name,), timeout))
    except QMPError:
        return None


def _holder_text(holder):
    if not holder:
        return 'unknown holder'
    return 'pid %s on %s since %s' % (holder.get('pid'), holder.get('controller'),
                                      time.strftime('%H:%M:%S', time.localtime(holder.get('since') or 0)))


def run_step(params, layout):
    """One step, in-process (the engine's local host handle)."""
    return HostMove(params, layout).run()


class MoveStep(StateMachine):
    """ivshmem.fleet.move_host: one step; only inspect and progress change nothing."""

    def __init__(self, params, layout, check_mode):
        super(MoveStep, self).__init__(check_mode)
        self.move = HostMove(params, layout)

    def state_done(self):
        self.result.update(self.move.run())
        self.changed = self.move.step not in ('inspect', 'progress')
