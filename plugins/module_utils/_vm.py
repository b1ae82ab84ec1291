# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""One QEMU guest on this host, as QEMU's own ``QEMUMachine`` holds one: the only way the
collection talks to a guest over QMP.

``GuestHandle`` knows a guest by its layout paths (``Layout.guest_paths``): its QMP connection
(``qmp()``, with one default timeout), its run state (``status``), ``stop``/``cont``/``quit``,
the time QEMU stamped on an event (``event_time``: STOP, RESUME) and what its devices show
from outside (``ivshmem_registers``, ``device_role``, ``machine_type``: no guest OS needed).
The protocol itself is _qmp.py's; the process that runs the guest is found by ``running_pid``.

Inside ``with handle.qmp() as qmp:`` every call on the handle uses that one connection (QEMU
sends an event only to the monitors connected when it happens: a STOP is awaited on the
connection that sent ``stop``); outside, each call opens a connection of its own. QEMU serves
one monitor client at a time (``-qmp unix:...,server=on``): a second connection opened while
one is held waits for its greeting until the first closes. A handle holds the block's
connection: it belongs to one thread (threads each make their own).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
from contextlib import contextmanager

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import machine_from_qom
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPClient, QMPError, event_seconds

# How long one QMP command may go unanswered, for every use that does not say otherwise: a
# running QEMU answers in milliseconds; a migration's own wait is bounded by its events.
QMP_TIMEOUT = 30.0
# How long an event awaited after its command may take (``stop`` then STOP): QEMU sends it at
# once; when it does not come, its time is reported unknown, never guessed.
EVENT_TIMEOUT = 5.0

IVSHMEM_VENDOR = 0x1af4
IVSHMEM_DEVICE = 0x1110
IVPOSITION_OFFSET = 8  # BAR0 registers: 0 INTRMASK, 4 INTRSTATUS (read clears: never read), 8 IVPOSITION
_UNASSIGNED = (-1, 0xffffffffffffffff)
_XP_RE = re.compile(r':\s*(0x[0-9a-fA-F]+)')


class GuestHandle:
    """One guest's QEMU, by its layout paths (``dir``, ``qmp``, ``pidfile``, ``record``...)."""

    def __init__(self, paths, timeout=QMP_TIMEOUT):
        self.paths = paths
        self.timeout = timeout
        self._open = None  # the connection of the ``qmp()`` block running now, if any

    @classmethod
    def of(cls, layout, name, timeout=QMP_TIMEOUT):
        """Guest ``name`` of ``layout``."""
        return cls(layout.guest_paths(name), timeout)

    @property
    def qmp_path(self):
        return self.paths['qmp']

    def __str__(self):
        # What waits and errors name: the QMP socket, as they did before there was a handle.
        return self.qmp_path

    # --- the connection -------------------------------------------------------------------
    @contextmanager
    def qmp(self, timeout=None):
        """A connected QMPClient (``timeout``: each answer's, default the handle's). Inside an
        open block the same connection is given again, and the handle's calls use it."""
        if self._open is not None:
            yield self._open
            return
        with QMPClient(self.qmp_path, timeout=self.timeout if timeout is None else timeout) as client:
            self._open = client
            try:
                yield client
            finally:
                self._open = None

    def command(self, name, arguments=None, timeout=None):
        """One command's result (``timeout``: for this answer, default the connection's)."""
        with self.qmp(timeout) as qmp:
            return qmp.command(name, arguments, timeout=timeout)

    # --- run state ------------------------------------------------------------------------
    def status(self):
        """QEMU's run state: ``running``, ``paused``, ``inmigrate``, ``postmigrate``..."""
        return self.command('query-status')['status']

    def stop(self):
        self.command('stop')

    def cont(self):
        self.command('cont')

    def event_time(self, name, timeout=EVENT_TIMEOUT):
        """The host wall-clock time QEMU stamped on event ``name`` (seconds, float), queued or
        arriving on the open connection; None when it did not come (the outage is then
        reported unknown, never guessed)."""
        if self._open is None:
            raise RuntimeError('%s: an event is awaited on an open connection (inside qmp())' % self.qmp_path)
        try:
            return event_seconds(self._open.wait_event((name,), timeout))
        except QMPError:
            return None

    # --- the process ----------------------------------------------------------------------
    def quit(self, timeout):
        """Stop QEMU: QMP quit, then signals. Returns the seconds waited (0.0: not running)."""
        record = _host.read_json(self.paths['record']) or {}
        uid = _host.uid_of((record.get('spec') or {}).get('user'))
        pid = running_pid(self.paths, uid, record.get('process'))
        if pid is None:
            return 0.0
        try:
            # At most 5 s for the answer: a QEMU that does not answer quit gets the signals,
            # and ``timeout`` bounds the whole stop.
            self.command('quit', timeout=min(timeout, 5.0))
        except QMPError:
            pass
        try:
            return _host.terminate(pid, self.qmp_path, timeout, uid)
        finally:
            _host.remove_stale_socket(self.qmp_path)

    # --- what the devices show from outside ----------------------------------------------
    def machine_type(self):
        """The versioned machine type the running QEMU resolved (``pc-i440fx-7.2``), or None."""
        return machine_from_qom(self.command('qom-get', {'path': '/machine', 'property': 'type'}))

    def ivshmem_registers(self):
        """{qdev id: {'ivposition': int or None (BARs not assigned yet), 'bar0': ..., 'bar2': ...}}."""
        with self.qmp() as qmp:
            return read_ivshmem_registers(qmp)

    def device_role(self, qdev_id):
        """The resolved role of an ivshmem device, from its QOM ``master`` property."""
        value = self.command('qom-get', {'path': '/machine/peripheral/%s' % qdev_id, 'property': 'master'})
        return 'master' if value in (True, 'on') else 'peer'


def running_pid(paths, uid, held=None):
    """The guest's QEMU: the process root spawned (``held``: its pid and start time, from the
    record root wrote), while it runs as the guest's account. A guest started before records
    held it: the pid its pidfile names when that is a process of the guest's account with its
    QMP socket, else the process of that account that listens on its QMP socket."""
    if uid is None:
        return None
    if held is not None:
        return _host.held_process(held, uid)
    pid = _host.read_pidfile(paths['pidfile'])
    if _host.process_alive(pid, paths['qmp'], uid):
        return pid
    pid = _host.socket_owner(paths['qmp'], uid)
    return pid if _host.process_alive(pid, paths['qmp'], uid) else None


# --- reading ivshmem state over a connected client (the migration primitives take one) ------
def _all_pci_devices(devices):
    """Every device of a query-pci bus, those behind bridges too (a q35 root port, say)."""
    found, pending = [], list(devices)
    while pending:
        device = pending.pop(0)
        found.append(device)
        pending.extend((device.get('pci_bridge') or {}).get('devices') or [])
    return found


def ivshmem_pci_devices(qmp):
    """{qdev id: {'bar0': address or None, 'bar2': address or None, 'bar2_size': bytes}}."""
    devices = {}
    for bus in qmp.command('query-pci'):
        for device in _all_pci_devices(bus.get('devices', [])):
            ident = device.get('id', {})
            if ident.get('vendor') != IVSHMEM_VENDOR or ident.get('device') != IVSHMEM_DEVICE:
                continue
            bars = dict((region['bar'], region) for region in device.get('regions', []))
            entry = {}
            for index in (0, 2):
                address = bars.get(index, {}).get('address')
                entry['bar%d' % index] = None if address in _UNASSIGNED or address is None else address
            entry['bar2_size'] = bars.get(2, {}).get('size')
            devices[device.get('qdev_id') or 'slot%d' % device.get('slot', 0)] = entry
    return devices


def read_word(qmp, address):
    text = qmp.command('human-monitor-command', {'command-line': 'xp /1wx 0x%x' % address})
    match = _XP_RE.search(text) if isinstance(text, str) else None
    if not match:
        raise QMPError('unexpected xp output %r' % (text,))
    return int(match.group(1), 16)


def read_ivshmem_registers(qmp):
    """{qdev id: {'ivposition': int or None (BARs not assigned yet), 'bar0': ..., 'bar2': ...}}."""
    registers = {}
    for qdev_id, bars in ivshmem_pci_devices(qmp).items():
        position = None
        if bars['bar0'] is not None:
            position = read_word(qmp, bars['bar0'] + IVPOSITION_OFFSET)
        registers[qdev_id] = dict(bars, ivposition=position)
    return registers
