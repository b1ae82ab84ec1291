# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The host side of a group move (ivshmem.fleet.move_host): one step, run from the table below.

Each host keeps one record per group (_move_journal.py): which run holds the group (the lock,
with a lease), and the journal step reached. A step writes its journal entry *before* it acts
and is idempotent, so a step cut at any point (controller killed, connection lost) is resolved
by running the move again. The decisions (finish the move or roll it back) are the engine's
(plugins/plugin_utils/_move_engine.py); the host side only does and records.

Journal steps on the destination: prepared -> loaded -> verified -> running -> done.
On the source: [unplugging -> unplugged ->] sending -> sent -> committing -> done. ``verified``
is written before the destination continues, ``committing`` before the engine asks it to:
without ``committing`` on the source the destination never ran, so the source may always be
resumed. Peers moved live (``live_peers``, _move_live_peers.py) keep running: unplugged on the
source before the master moves, migrated one by one once it runs on the destination, plugged
back there.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time
from collections import namedtuple

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host, _hugepages, _qemu_binary, _tls
from ansible_collections.ivshmem.fleet.plugins.module_utils import _move_live_peers as live
from ansible_collections.ivshmem.fleet.plugins.module_utils import _move_steps as steps
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import hugepage_need_of, on_host
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import Guest, exit_log, guest_status
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import check_name
from ansible_collections.ivshmem.fleet.plugins.module_utils._move_journal import Heartbeat, Journal, MoveError
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import DEFAULT_QEMU, MOVE_DEFAULTS
from ansible_collections.ivshmem.fleet.plugins.module_utils._region import Region, region_status
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import Server, server_status
from ansible_collections.ivshmem.fleet.plugins.module_utils._state_machine import StateMachine


class AnyBut(tuple):
    """Journal steps a step is refused from (all others allowed): ``step in AnyBut(...)``."""

    def __contains__(self, name):
        return not tuple.__contains__(self, name)


# One step of a move on this host.
# allowed_from: the journal steps of this run here it may act from (None: any); else it is
#   refused with ``refusal`` (``%(step)s``: the record's step), unless ``forceable`` and forced.
# done_when: None, or (move, step, record) -> its answer when this run already did it (step:
#   this run's journal step here, or None), None when there is something left to do.
# action: move -> its answer. changes: False for a step that only looks. renews: the lease is
#   renewed while the step runs (a long one).
Step = namedtuple('Step', 'allowed_from refusal forceable done_when action changes renews')


def row(action, allowed_from=None, refusal=None, forceable=False, done_when=None, changes=True, renews=False):
    return Step(allowed_from, refusal, forceable, done_when, action, changes, renews)


TABLE = {
    # the lock and the record
    'inspect': row(steps.inspect, changes=False),
    'claim': row(steps.claim),
    'mark': row(steps.mark),
    'progress': row(steps.progress, changes=False),
    'release': row(steps.release, done_when=steps.not_mine),
    # the destination
    'prepare_destination': row(steps.prepare_destination, done_when=steps.prepared_already),
    'verify': row(steps.verify, done_when=steps.verified_already, renews=True),
    'commit': row(steps.commit, allowed_from=steps.COMMITTABLE, refusal=steps.NOT_VERIFIED),
    'rollback_destination': row(steps.rollback_destination, allowed_from=AnyBut(steps.MAY_RUN),
                                refusal=steps.MAY_RUN_REFUSAL, forceable=True, done_when=steps.nothing_to_discard),
    # the source
    'send': row(steps.send, done_when=steps.sent_already, renews=True),
    'finish_source': row(steps.finish_source),
    'rollback_source': row(steps.rollback_source, allowed_from=AnyBut(('committing',)), refusal=steps.NOT_COMMITTING,
                           forceable=True, done_when=steps.nothing_to_resume),
    # peers moved live
    'unplug_peers': row(live.unplug_peers, done_when=live.unplugged_already),
    'prepare_peer': row(live.prepare_peer, done_when=live.peer_arrived),
    'send_peer': row(live.send_peer, done_when=live.peer_sent, renews=True),
    'plug_peer': row(live.plug_peer),
}
# The steps as move_host takes them (its choices), in this order.
STEPS = ('inspect', 'claim', 'mark', 'progress', 'prepare_destination', 'unplug_peers', 'send', 'verify', 'commit',
         'prepare_peer', 'send_peer', 'plug_peer', 'finish_source', 'rollback_source', 'rollback_destination',
         'release')


class HostMove:
    """One host's part in moving one group. ``params`` as ivshmem.fleet.move_host takes them."""

    def __init__(self, params, layout):
        self.layout = layout
        self.params = params
        self.group = params.get('group') or {}
        if not isinstance(self.group, dict) or not isinstance(self.group.get('master'), dict) or \
                'name' not in self.group['master'] or \
                not isinstance(self.group.get('server') or self.group.get('region'), dict) or \
                not isinstance(self.group.get('peers') or [], list):
            raise ValidationError('group', 'must be one group as ivshmem.fleet.plan returns it (name, server or '
                                           'region, master, peers, ...)')
        # Server and guest options that differ on this host (its QEMU elsewhere, say).
        self.group = on_host(self.group, params.get('server_overrides'), params.get('guest_overrides'))
        self.name = check_name('group.name', self.group.get('name'))
        self.run_id = check_name('run_id', params.get('run_id'))
        self.step = params.get('step')
        if self.step not in STEPS:
            raise ValidationError('step', 'must be one of %s' % ', '.join(STEPS))
        self.master = self.group['master']['name']
        self.peers = [peer['name'] for peer in self.group.get('peers') or []]
        # The peers this move keeps running (moved live); the others are paused and restarted.
        self.live = [name for name in params.get('live_peers') or [] if name in self.peers]
        # Where the group's memory lives: a doorbell group's server, or a plain group's region.
        self.server, self.region = self.group.get('server'), self.group.get('region')
        self.start_timeout = params.get('start_timeout') or MOVE_DEFAULTS['start_timeout']
        self.journal = Journal(layout, self.name, self.run_id, params)
        # {'dir': this host's credentials, 'peer': the other host}, or None for a stream in clear.
        self.tls = _tls.check_settings('tls', params.get('tls'))

    def run(self):
        entry = TABLE[self.step]
        beat = Heartbeat(self.journal.renew, 10.0) if entry.renews else None
        try:
            result = self._run(entry) or {}
        finally:
            if beat is not None:
                beat.stop()
        result['host_time'] = time.time()
        return result

    def _run(self, entry):
        record = self.journal.record()
        mine = (record or {}).get('step') if (record or {}).get('run_id') == self.run_id else None
        if entry.allowed_from is not None and mine not in entry.allowed_from and \
                not (entry.forceable and self.params.get('force')):
            raise MoveError(entry.refusal % {'step': (record or {}).get('step')})
        if entry.done_when is not None:
            answer = entry.done_when(self, mine, record)
            if answer is not None:
                return answer
        return entry.action(self)

    # --- what runs here ---------------------------------------------------------------
    def state(self):
        """What of the group is here: each guest's state, its server's (or region's), the versioned
        machine types its running guests resolved, and the huge pages they hold (``hugepages_held``,
        {page size: bytes}: the memory file on them that exists, running guests' RAM on them)."""
        guests, machines, held = {}, {}, {}
        for name in [self.master] + self.peers:
            status = guest_status(self.layout, name, registers=False)
            guests[name] = 'absent' if status is None else status['state']
            if status is not None and status['pid'] is not None and status.get('machine_type'):
                machines[name] = status['machine_type']
            spec = (status or {}).get('record', {}).get('spec') or {}
            if status is not None and status['pid'] is not None and spec.get('hugepages') and \
                    isinstance(spec.get('memory'), int):
                held[spec['hugepages']] = held.get(spec['hugepages'], 0) + (spec['memory'] << 20)
        holder = region_status(self.layout, self.name) if self.region else server_status(self.layout, self.name)
        spec = (holder or {}).get('spec') or {}
        memory = (holder or {}).get('path' if self.region else 'memory')
        if spec.get('hugepages') and isinstance(spec.get('size'), int) and memory and os.path.exists(memory):
            held[spec['hugepages']] = held.get(spec['hugepages'], 0) + spec['size']
        return {'guests': guests, 'server': 'absent' if holder is None else holder['state'], 'machines': machines,
                'hugepages_held': held}

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

    def view(self, record):
        """What the engine decides on: the journal, what runs here, the TLS credentials lacking."""
        binaries, offers = self._qemu()
        return {'record': record, 'state': self.state(), 'binaries': binaries, 'qemu': offers,
                'tls_missing': _tls.missing(self.tls['dir']) if self.tls else [], 'ports_taken': self._ports_taken(),
                'hugepages': _hugepages.pools(), 'hugepage_need': self._hugepage_need()}

    def _hugepage_need(self):
        """The huge pages the group takes here, this host's overrides applied (a host whose guests
        run without huge pages needs none for them), or None where an override is no size (the
        guest's own start says so, by field)."""
        try:
            return hugepage_need_of(self.group)
        except ValueError:
            return None

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

    def guest_here(self, params, **extra):
        """Guest ``params`` (a guest of the group, as the plan lists it) on this host."""
        return Guest.from_params(dict(params, timeout=self.start_timeout, **extra), self.layout)

    def receive_guest(self, params, uri, unplugged=()):
        """Guest ``params`` started here waiting for its stream at ``uri`` (over this move's TLS,
        in clear only when the move is), unless it waits already: its status."""
        return self.guest_here(params, incoming_uri=uri, incoming_tls=self.tls, incoming_in_clear=self.tls is None,
                               unplugged=list(unplugged)).receive()

    def run_guest(self, params):
        """Guest ``params`` running here: started if it is not, resumed if paused, its devices
        plugged back. (changed, its status)."""
        return self.guest_here(params).keep_running()

    def server_here(self, **extra):
        """The group's server on this host (``extra``: options of this step, a hold say)."""
        return Server.from_params(dict(self.server, timeout=self.start_timeout, **extra), self.layout)

    def fresh_memory(self):
        """The group's memory here made afresh for the master's stream: a fresh server admitting
        only the master (a doorbell group), or its region made anew, all zeros (a plain one)."""
        if self.region:
            Region.from_params(self.region, self.layout).renew()
        else:
            self.server_here(**(dict(admission='held', hold_for=self.master) if self.builtin() else {})).restart()

    def open_memory(self):
        """The group's memory open to its peers here: its builtin server's hold released (a
        region is open to its members from the start)."""
        if self.builtin():
            self.server_here().keep_started()

    def builtin(self):
        """Served by our server (IDs pinned, admission held): a doorbell group's, not upstream's."""
        return bool(self.server) and self.server.get('implementation', 'builtin') == 'builtin'

    def remove_guest(self, name):
        Guest.from_params(dict(name=name, timeout=30), self.layout).remove()

    def remove_group_here(self):
        for name in self.peers + [self.master]:
            self.remove_guest(name)
        if self.region:
            # Its group stays: accounts of the host (a reader's session) may hold it still.
            Region.from_params(self.region, self.layout).remove(keep_group=True)
        else:
            self.server_here().remove()

    def exited(self, name):
        """Why guest ``name``'s QEMU here stopped on its own (its last log lines), as a sentence."""
        said = exit_log(self.layout, name)
        return 'its QEMU exited: %s' % said if said else 'it is not running'

    def tls_for(self, status):
        """This move's TLS settings for the QEMU of ``status`` (it loads the credentials as its account)."""
        return _tls.for_guest(self.tls, status['record']['spec']['user'], self.layout.runtime_dir)

    def memories(self):
        if self.region:
            status = region_status(self.layout, self.name) or {}
            path = status.get('path') if status.get('state') == 'present' else None
        else:
            path = (server_status(self.layout, self.name) or {}).get('memory')
        if not path:
            raise MoveError('the memory of %s %s is not visible on this host; it cannot be verified' % (
                'region' if self.region else 'server', self.name))
        return [path]


def run_step(params, layout):
    """One step, in-process (the tests' and benchmarks' local host handle)."""
    return HostMove(params, layout).run()


class MoveStep(StateMachine):
    """ivshmem.fleet.move_host: one step, as run_manager runs a module's manager."""

    def __init__(self, params, layout, check_mode):
        super(MoveStep, self).__init__(check_mode)
        self.move = HostMove(params, layout)

    def state_done(self):
        self.result.update(self.move.run())
        self.changed = TABLE[self.move.step].changes
