# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The steps of a group move on one host, but those of peers moved live (_move_live_peers.py).

Each step is an action, ``action(move)``, and some have a check, ``done_when(move, step,
record)``, that answers for them when this run already did what they do (``step``: this run's
journal step here, or None). The table in _move.py says which step runs from which journal
step; ``move`` is the _move.HostMove the step runs for.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading
import time

from ansible_collections.ivshmem.fleet.plugins.module_utils._checksum import checksum_files
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import exit_log, guest_status
from ansible_collections.ivshmem.fleet.plugins.module_utils._migration import (
    MigrationError, cancel_and_resume, follow_migration, progress_of, settle_source, start_migration,
    verify_destination, wait_loaded)
from ansible_collections.ivshmem.fleet.plugins.module_utils._move_journal import DISCARDABLE, RESUMABLE, MoveError
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import MIGRATION_DEFAULTS
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPError
from ansible_collections.ivshmem.fleet.plugins.module_utils._verify_channel import ChannelError, Listener, exchange
from ansible_collections.ivshmem.fleet.plugins.module_utils._vm import GuestHandle


# --- the lock and the record -----------------------------------------------------------
def inspect(move):
    record = move.journal.record()
    if record:
        record['lease_expired'] = time.time() > record.get('lease_until', 0)
    return move.view(record)


def claim(move):
    """Take the group's lock for this run: compare-and-swap against the run the engine saw."""
    return move.view(move.journal.claim(move.params.get('expect_run'), move.params.get('force')))


def mark(move):
    return {'record': move.journal.write(move.params['mark'])}


def progress(move):
    record = move.journal.record() or {}
    return {'progress': record.get('progress'), 'step': record.get('step')}


def not_mine(move, step, record):
    """Release: a record this run does not hold is left as it is."""
    if record is None or record.get('run_id') != move.run_id:
        return {'record': record}
    return None


def release(move):
    return {'record': move.journal.write('done', outcome=move.params.get('outcome'))}


# --- the destination ---------------------------------------------------------------------
def prepared_already(move, step, record):
    if step == 'prepared' and move.state()['guests'][move.master] == 'incoming':
        return {'record': record}
    return None


def prepare_destination(move):
    """Fresh memory (a server admitting only the master, or a region all zeros), and the master
    waiting paused for the stream (at ID 0 on our server)."""
    state = move.state()
    serving = [name for name, where in state['guests'].items() if where in ('running', 'paused', 'migrated')]
    if serving:
        raise MoveError('destination runs %s of group %s already; it cannot receive the group' % (
            ', '.join(sorted(serving)), move.name))
    move.journal.write('preparing')
    move.remove_guest(move.master)
    move.fresh_memory()
    uri = move.params['uri']
    master_id = move.receive_guest(move.group['master'], uri)['ivshmem'][0].get('server_id')
    if move.builtin() and master_id != 0:
        raise MoveError('the destination master has ID %s, not 0, on the fresh server' % master_id)
    return {'record': move.journal.write('prepared', uri=uri), 'master_id': master_id}


def verified_already(move, step, record):
    if step in ('verified', 'running'):
        return {'record': commit_here(move, None) if move.params.get('channel_key') else record}
    return None


def verify(move):
    """Wait until the stream is loaded; IVPOSITION 0 and the memory's checksum, still paused.

    With a channel key, the destination also takes the source's checksums straight from the
    source and, when they match, continues at once (see _verify_channel.py).
    """
    record = move.journal.record() or {}
    key = move.params.get('channel_key')
    listener = Listener(move.params['uri'], key, move.run_id) if key else None
    try:
        if not (record.get('run_id') == move.run_id and record.get('step') == 'loaded'):
            record = _load_and_check(move)
        if listener is None:
            return {'record': record}
        message = listener.receive(move.params.get('checksum_timeout') or 60)
        mine = record['verification']['checksums']
        if message.get('checksums') != mine:
            listener.answer({'ok': False, 'why': 'destination has %s' % mine})
            raise MoveError('shared memory differs after the migration: source %s, destination %s' % (
                message.get('checksums'), mine))
        return {'record': commit_here(move, mine, answer=listener.answer)}
    except ChannelError as exc:
        raise MoveError('verification channel: %s' % exc)
    finally:
        if listener is not None:
            listener.close()


def _load_and_check(move):
    status = guest_status(move.layout, move.master, registers=False)
    if status is None or status['pid'] is None:
        raise MoveError('the destination master %s did not receive the stream: %s' % (
            move.master, move.exited(move.master)))
    timeout = move.params.get('timeout') or 300
    try:
        with GuestHandle.of(move.layout, move.master).qmp() as dq:
            waited = wait_loaded(dq, timeout)
            check = verify_destination(dq, move.memories(), move.params.get('checksum') or MIGRATION_DEFAULTS['checksum'])
    except QMPError:
        said = exit_log(move.layout, move.master)
        if said is None:
            raise
        # The destination refused the stream (another machine type, say): its own words.
        raise MoveError('the destination master %s refused the stream: its QEMU exited: %s' % (move.master, said))
    if check['ok'] and move.builtin():
        # IVPOSITION keeps the ID the master got at its start: only the server can say it still
        # serves the master as ID 0 (a server restarted under it strands it, memory or not).
        held = (guest_status(move.layout, move.master, registers=False) or {}).get('ivshmem') or [{}]
        if held[0].get('server_id') != 0:
            check.update(ok=False, problem='the destination server does not serve the master as ID 0 (it has ID '
                                           '%s there: the server restarted under it?)' % held[0].get('server_id'))
    if not check['ok']:
        raise MoveError('destination check failed: %s' % check['problem'])
    check['load_wait_s'] = round(waited, 3)
    return move.journal.write('loaded', allowed_from=('prepared', 'loaded'), verification=check)


def commit(move):
    """Run the verified destination: checksums equal to the source's, then cont, then the peers."""
    return {'record': commit_here(move, move.params.get('expected_checksums'))}


# The journal steps (of this run) from which the destination may be committed.
COMMITTABLE = ('loaded', 'verified', 'running')
NOT_VERIFIED = 'the destination was not verified by this run (step %(step)s)'


def commit_here(move, expected, answer=None):
    record = move.journal.record() or {}
    mine = record.get('run_id') == move.run_id
    if not mine or record.get('step') not in COMMITTABLE:
        raise MoveError(NOT_VERIFIED % {'step': record.get('step')})
    status = guest_status(move.layout, move.master, registers=False)
    if status is None or status['pid'] is None:
        raise MoveError('the destination master %s is gone' % move.master)
    if record['step'] == 'loaded':
        got = record['verification']['checksums']
        if got != (expected or []):
            raise MoveError('shared memory differs: destination %s, source %s' % (got, expected))
        # Only one of this and a discard can win (both swap from loaded under the lock).
        record = move.journal.write('verified', allowed_from=('loaded',))
    resumed_at = record.get('resumed_at')
    if status['state'] != 'running':
        master = GuestHandle.of(move.layout, move.master)
        with master.qmp():
            master.cont()
            resumed_at = master.event_time('RESUME')
        record = move.journal.write('verified', resumed_at=resumed_at)
    if answer is not None:
        answer({'ok': True, 'resumed_at': resumed_at})
    move.open_memory()  # admission opens for the peers
    started = _start_peers(move, [p for p in move.group.get('peers') or [] if p['name'] not in move.live])
    peers_running_at = max(started.values()) if started else record.get('peers_running_at')
    return move.journal.write('running', resumed_at=resumed_at, peers_running_at=peers_running_at)


def _start_peers(move, peers):
    """Start ``peers`` here, with their pinned IDs: all at once when pinned, else in order."""
    ids = move.group.get('ids') or {}
    started, errors = {}, []

    def start(peer):
        try:
            changed, status = move.run_guest(peer)
        except Exception as exc:  # pylint: disable=broad-except  # reported below, per peer
            errors.append('%s: %s' % (peer['name'], exc))
            return
        if changed:
            started[peer['name']] = time.time()
        have, want = status['ivshmem'][0].get('server_id'), ids.get(peer['name'])
        if want is not None and have != want:
            errors.append('peer %s has ID %s on the destination, not its pinned %s' % (peer['name'], have, want))

    if ids and move.builtin():
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


# A destination verified by this run may run the group: discarded only when forced.
MAY_RUN = ('verified', 'running')
MAY_RUN_REFUSAL = 'the destination was verified and may run; it is not discarded'


def nothing_to_discard(move, step, record):
    """Only what this move prepared here is discarded: a host whose journal never reached
    ``preparing`` in this move keeps whatever runs on it."""
    if step not in DISCARDABLE and not move.params.get('force'):
        if step is not None:
            move.journal.write('done', outcome=move.params.get('outcome') or 'nothing to discard')
        return {'discarded': False}
    return None


def rollback_destination(move):
    """Nothing of this move left here."""
    move.journal.write('discarding', allowed_from=None if move.params.get('force') else DISCARDABLE)
    # What a QEMU that stopped on its own said, kept before its directory goes.
    exited = dict((name, exit_log(move.layout, name)) for name in [move.master] + move.peers)
    exited = dict((name, said) for name, said in exited.items() if said)
    move.remove_group_here()
    move.journal.write('done', outcome=move.params.get('outcome') or 'rolled back', exited=exited)
    return {'discarded': True, 'exited': exited}


# --- the source ------------------------------------------------------------------------------
def sent_already(move, step, record):
    status = guest_status(move.layout, move.master, registers=False)
    if step in ('sent', 'committing') and status is not None and status['state'] == 'migrated':
        return {'record': record}
    return None


def send(move):
    """Pause the peers, migrate the master, hash the paused source. Fails back to running."""
    status = guest_status(move.layout, move.master, registers=False)
    if status is None or status['state'] != 'running':
        raise MoveError('the master %s is %s here, not running' % (
            move.master, 'absent' if status is None else status['state']))
    memories = move.memories()
    move.journal.write('sending')
    peers_stopped_at = None
    try:
        for name in move.peers:
            if name in move.live:
                continue  # unplugged, it keeps running: it migrates after the master
            peer = guest_status(move.layout, name, registers=False)
            if peer is not None and peer['state'] == 'running':
                vm = GuestHandle.of(move.layout, name)
                with vm.qmp():
                    vm.stop()
                    at = vm.event_time('STOP')
                if at is not None:
                    peers_stopped_at = min(at, peers_stopped_at or at)
        move.journal.write('sending', peers_stopped_at=peers_stopped_at)
        hashing = _Background(checksum_files, memories, move.params.get('checksum') or MIGRATION_DEFAULTS['checksum'])
        with GuestHandle.of(move.layout, move.master).qmp() as sq:
            start_migration(sq, move.params['uri'], move.params.get('max_bandwidth') or MIGRATION_DEFAULTS['max_bandwidth'],
                            move.params.get('downtime_limit') or MIGRATION_DEFAULTS['downtime_limit'], move.tls_for(status))
            # At the switchover gate the master and its peers are stopped: the memory is final,
            # so it is hashed while the last pass runs, not after it.
            report = follow_migration(sq, move.params.get('timeout') or 300,
                                      lambda info: move.journal.write('sending', progress=progress_of(info)),
                                      gate=hashing.start)
            settle_source(sq)
    except (MigrationError, QMPError) as exc:
        resume_source(move)
        move.journal.write('done', outcome='rolled back: %s' % exc)
        raise MoveError('migration failed and the group runs here again: %s' % exc)
    sums, seconds = hashing.result()
    report['checksums'] = [sums[path]['checksum'] for path in memories]
    report['peers_stopped_at'] = peers_stopped_at
    report['checksum_seconds'] = round(seconds, 3)
    key = move.params.get('channel_key')
    if not key:
        return {'record': move.journal.write('sent', sent=report)}
    # From here on the destination may run: journal that before the checksums leave.
    move.journal.write('committing', sent=report)
    try:
        verdict = exchange(move.params['uri'], key, move.run_id,
                           {'checksums': report['checksums'], 'stopped_at': report.get('stopped_at')},
                           move.params.get('checksum_timeout') or 60)
    except ChannelError as exc:
        report['channel'] = 'no verdict: %s' % exc
        return {'record': move.journal.write('committing', sent=report)}
    if verdict['ok'] is False:  # said explicitly by the destination (exchange checks it is a bool)
        # The destination refused and never ran: resume here at once.
        resume_source(move)
        move.journal.write('done', outcome='rolled back: the destination refused: %s' % verdict.get('why'))
        raise MoveError('shared memory differs after the migration (%s); the group runs here again' % verdict.get('why'))
    report['channel'] = 'verified by the destination'
    return {'record': move.journal.write('committing', sent=report)}


def resume_source(move):
    """Master and peers running here again, whatever the migration left."""
    status = guest_status(move.layout, move.master, registers=False)
    if status is not None and status['pid'] is not None:
        with GuestHandle.of(move.layout, move.master).qmp() as sq:
            cancel_and_resume(sq)
    elif status is None or status['pid'] is None:
        move.run_guest(move.group['master'])
    for peer in move.group.get('peers') or []:
        move.run_guest(peer)


# Without committing on the source, the destination never ran: the source may be resumed.
# With it, only when forced (the engine knows the destination is discarded).
NOT_COMMITTING = 'the destination may already run the group (journal step %(step)s); the source stays paused until ' \
                 'the destination is resolved'


def nothing_to_resume(move, step, record):
    """Only a host that began sending in this move is touched."""
    if step not in RESUMABLE:
        if step is not None:
            move.journal.write('done', outcome=move.params.get('outcome') or 'nothing to resume')
        return {'state': move.state(), 'resumed': False}
    return None


def rollback_source(move):
    """The group running here again."""
    move.journal.write('resuming')
    resume_source(move)
    move.journal.write('done', outcome=move.params.get('outcome') or 'rolled back')
    return {'state': move.state(), 'resumed': True}


def finish_source(move):
    """The group runs on the destination: nothing of it left here. A peer moved live that
    still runs here has not reached the destination yet: it is never removed."""
    for name in move.live:
        status = guest_status(move.layout, name, registers=False)
        if status is not None and status['pid'] is not None and status['state'] != 'migrated':
            raise MoveError('peer %s still runs here (%s): it has not moved yet, so the source is kept' % (
                name, status['state']))
    move.journal.write('finishing')
    move.remove_group_here()
    return {'record': move.journal.write('done', outcome='moved')}


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
