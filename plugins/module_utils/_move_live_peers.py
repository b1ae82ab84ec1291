# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The steps of the peers a group move keeps running (``live_peers``, the group's ``peer_mode:
live``): unplugged on the source before the master moves, migrated one by one once it runs on
the destination, plugged back there: a doorbell group's onto the destination's server, a plain
group's onto the destination's region (its path there, as _groups.on_host maps it, is in the
peer's record on the destination). Step functions as in _move_steps.py, listed in _move.py's
table."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible_collections.ivshmem.fleet.plugins.module_utils import _readiness
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import GuestError, guest_status, plug_devices, unplug_devices
from ansible_collections.ivshmem.fleet.plugins.module_utils._hotplug import HotplugError
from ansible_collections.ivshmem.fleet.plugins.module_utils._migration import (
    MigrationError, cancel_and_resume, finish_started_migration, follow_migration, start_migration, wait_loaded)
from ansible_collections.ivshmem.fleet.plugins.module_utils._move_journal import MoveError
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import MIGRATION_DEFAULTS
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPError
from ansible_collections.ivshmem.fleet.plugins.module_utils._vm import GuestHandle
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import WaitTimeout


def live_peer(move):
    """The peer (its options) that the step's ``peer`` names; it must be one this move keeps running."""
    name = move.params.get('peer')
    if name not in move.live:
        raise ValidationError('peer', '%r is not a peer this move keeps running (live_peers)' % (name,))
    return next(p for p in move.group['peers'] if p['name'] == name)


def unplugged_already(move, step, record):
    if step in ('unplugged', 'sending', 'sent', 'committing'):
        return {'record': record}
    return None


def unplug_peers(move):
    """Source: each live peer's device unplugged; the guests release it and keep running.

    A guest that does not release its device fails the step (the engine plugs back the
    others and resumes the group here), unless the group falls back to restarting it: it is
    then paused and restarted on the destination like a peer of ``peer_mode: restart``."""
    record = move.journal.record() or {}
    released = dict(record.get('peers_unplugged_at') or {}) if record.get('run_id') == move.run_id else {}
    live, fallback = list(move.live), {}
    move.journal.write('unplugging', live_peers=live, peers_unplugged_at=released)
    timeout = move.group.get('peer_unplug_timeout') or 30
    for name in move.live:
        try:
            at = unplug_devices(move.layout, name, timeout)
        except (HotplugError, GuestError) as exc:
            if move.group.get('peer_fallback') != 'restart':
                raise MoveError(str(exc))
            live.remove(name)  # restarted on the destination instead, as the group allows
            fallback[name] = str(exc)
            move.journal.write('unplugging', live_peers=live, fallback=fallback)
            continue
        stamps = [stamp for stamp in at.values() if stamp is not None]
        released[name] = min(stamps) if stamps else released.get(name) or time.time()
        move.journal.write('unplugging', peers_unplugged_at=released)
    return {'record': move.journal.write('unplugged', live_peers=live, peers_unplugged_at=released)}


def peer_arrived(move, step, record):
    status = guest_status(move.layout, live_peer(move)['name'], registers=False)
    if status is not None and status['pid'] is not None and status['state'] in ('incoming', 'paused', 'running'):
        return {'peer_state': status['state']}
    return None


def prepare_peer(move):
    """Destination: the live peer started without its device, waiting for its stream (over
    TLS from the source), unless it already arrived."""
    peer = live_peer(move)
    move.remove_guest(peer['name'])
    devices = ['ivshmem%d' % index for index in range(len(peer.get('ivshmem') or []))]
    move.receive_guest(peer, move.params['uri'], unplugged=devices)
    return {'peer_state': 'incoming'}


def peer_sent(move, step, record):
    name = live_peer(move)['name']
    status = guest_status(move.layout, name, registers=False)
    if status is not None and status['state'] == 'migrated':
        return {'sent': ((record or {}).get('peers_sent') or {}).get(name) or {}}
    return None


def send_peer(move):
    """Source: migrate the live peer; it runs until its switchover. Fails back to running here."""
    name = live_peer(move)['name']
    record = move.journal.record() or {}
    sent = dict(record.get('peers_sent') or {})
    status = guest_status(move.layout, name, registers=False)
    if status is None or status['pid'] is None:
        raise MoveError('peer %s is %s here, not running' % (name, 'absent' if status is None else status['state']))
    with GuestHandle.of(move.layout, name).qmp() as pq:
        try:
            # A step cut mid-migration left it running in QEMU: finish that one.
            report = finish_started_migration(pq, move.params.get('timeout') or 300)
            if report is None:
                if pq.command('query-status')['status'] != 'running':
                    raise MoveError('peer %s is %s here, not running' % (name, status['state']))
                start_migration(pq, move.params['uri'], move.params.get('max_bandwidth') or MIGRATION_DEFAULTS['max_bandwidth'],
                                move.params.get('downtime_limit') or MIGRATION_DEFAULTS['downtime_limit'], move.tls_for(status))
                report = follow_migration(pq, move.params.get('timeout') or 300)
        except (MigrationError, QMPError) as exc:
            try:
                cancel_and_resume(pq)
            except QMPError:
                pass
            raise MoveError('peer %s did not migrate (%s); it keeps running here' % (name, exc))
    report.pop('events', None)
    sent[name] = report
    move.journal.write(record.get('step') or 'committing', peers_sent=sent)
    return {'sent': report}


def plug_peer(move):
    """Destination: the migrated peer runs, its device plugged back (a doorbell device with its
    pinned ID, IVPOSITION read back from the device before the peer counts as moved; a plain one
    onto this host's region, which has no IDs)."""
    name = live_peer(move)['name']
    status = guest_status(move.layout, name, registers=False)
    if status is None or status['pid'] is None:
        raise MoveError('peer %s is not running here; its migration did not arrive' % name)
    resumed_at = None
    vm = GuestHandle.of(move.layout, name)
    with vm.qmp() as dq:
        wait_loaded(dq, move.params.get('timeout') or 300)
        if vm.status() != 'running':
            vm.cont()
            resumed_at = vm.event_time('RESUME')
    try:
        plugged = plug_devices(move.layout, name)
        _value, _waited = _readiness.wait('bars_assigned', move.start_timeout, vm)
    except (GuestError, WaitTimeout) as exc:
        raise MoveError('peer %s runs here but its device is not back: %s' % (name, exc))
    device = guest_status(move.layout, name)['ivshmem'][0]
    want = (move.group.get('ids') or {}).get(name)
    if move.builtin() and want is not None and device.get('server_id') != want:
        raise MoveError('peer %s has ID %s on the destination, not its pinned %s' % (name, device.get('server_id'), want))
    if device.get('server_id') is not None and device.get('ivposition') != device.get('server_id'):
        raise MoveError('peer %s reads IVPOSITION %s, but the server gave it ID %s' % (
            name, device.get('ivposition'), device.get('server_id')))
    record = move.journal.record() or {}
    done = dict(record.get('peers_plugged') or {})
    done[name] = dict(done.get(name) or {}, id=device.get('server_id'), ivposition=device.get('ivposition'),
                      plugged_at=min(plugged.values()) if plugged else (done.get(name) or {}).get('plugged_at'))
    if resumed_at is not None:
        done[name]['resumed_at'] = resumed_at
    return {'record': move.journal.write(record.get('step') or 'running', peers_plugged=done), 'peer': done[name]}
