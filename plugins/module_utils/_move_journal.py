# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A group move's record on one host: the journal and the lock (see _move.py for the steps).

Each host keeps one record per group in ``<runtime_dir>/moves/<group>.json``: which run holds
the group (the lock, with a lease), and the journal step reached. Every read-modify-write of a
record is made under the host's lock file, so a write can compare-and-swap: refused when
another run took the group, or when the journal moved on to a step it does not expect.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fcntl
import os
import threading
import time
from contextlib import contextmanager

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import MOVE_DEFAULTS

# Journal steps from which a destination may be discarded, and a source resumed.
DISCARDABLE = ('preparing', 'prepared', 'loaded', 'discarding')
RESUMABLE = ('unplugging', 'unplugged', 'sending', 'sent', 'committing', 'resuming')
# A record whose step is one of these holds no lock.
FINISHED = ('done',)
# What a claim of a group no run holds clears from the last run's record.
_RUN_DATA = ('sent', 'verification', 'resumed_at', 'peers_running_at', 'peers_stopped_at', 'progress', 'outcome', 'uri',
             'live_peers', 'fallback', 'peers_unplugged_at', 'peers_sent', 'peers_plugged')


class MoveError(FleetError):
    """A step could not do what it was asked; the message says what and where the group is."""


def read_journal(layout, group):
    return _host.read_json(layout.move_record(group))


def transitions(layout):
    """{group: record} of every unfinished move on this host (for ivshmem.fleet.info)."""
    found = {}
    for name in _host.names(layout.moves_dir()):
        if name.endswith('.json'):
            record = _host.read_json(os.path.join(layout.moves_dir(), name))
            if record and record.get('step') not in FINISHED:
                found[name[:-5]] = record
    return found


class Journal:
    """Group ``name``'s record on this host, written by run ``run_id``. ``params`` (as
    ivshmem.fleet.move_host takes them) give the lease and who writes: holder, role, source and
    destination."""

    def __init__(self, layout, name, run_id, params):
        self.layout, self.name, self.run_id, self.params = layout, name, run_id, params
        self.path = layout.move_record(name)

    @contextmanager
    def locked(self):
        """Serializes read-modify-write of the records on this host (held for one step only)."""
        _host.ensure_dir(self.layout.moves_dir(), 0o700)
        with open(self.layout.move_lock(), 'a') as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record(self):
        return read_journal(self.layout, self.name)

    def my_step(self):
        """The journal step of this run here; None when the record is another run's (or none)."""
        record = self.record() or {}
        return record.get('step') if record.get('run_id') == self.run_id else None

    def write(self, step, allowed_from=None, **data):
        """Journal ``step`` for this run (renews the lease). Refuses if another run took the group,
        or, with ``allowed_from``, if the journal moved on to another step meanwhile (the
        compare-and-swap that lets only one of a commit and a discard win)."""
        with self.locked():
            return self._write_locked(step, data, allowed_from=allowed_from)

    def _write_locked(self, step, data, takeover=False, allowed_from=None):
        record = self.record() or {}
        if not takeover and record.get('run_id') not in (None, self.run_id) and record.get('step') not in FINISHED:
            raise MoveError('group %s is now held by run %s (%s)' % (
                self.name, record.get('run_id'), holder_text(record.get('holder'))))
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
        with self.locked():
            record = self.record() or {}
            if record.get('run_id') == self.run_id and record.get('step') not in FINISHED:
                record['lease_until'] = time.time() + (self.params.get('lease') or MOVE_DEFAULTS['lease'])
                _host.write_json(self.path, record, 0o600)

    def claim(self, expect, force):
        """Take the group's lock for this run: compare-and-swap against the run the engine saw
        (``expect``), or any run with ``force``. Returns the record."""
        with self.locked():
            record = self.record() or {}
            held = record.get('run_id') not in (None, self.run_id) and record.get('step') not in FINISHED
            if held and record.get('run_id') != expect and not force:
                raise MoveError('group %s is held by run %s (%s), step %s' % (
                    self.name, record.get('run_id'), holder_text(record.get('holder')), record.get('step')))
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
                for key in _RUN_DATA:
                    record.pop(key, None)
                _host.write_json(self.path, record, 0o600)
            return self._write_locked(step, data, takeover=True)


class Heartbeat:
    """Calls ``beat`` every ``interval`` seconds in a thread until stopped (a long step renews
    its lease so)."""

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


def holder_text(holder):
    if not holder:
        return 'unknown holder'
    return 'pid %s on %s since %s' % (holder.get('pid'), holder.get('controller'),
                                      time.strftime('%H:%M:%S', time.localtime(holder.get('since') or 0)))
