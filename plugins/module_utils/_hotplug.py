# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unplugging a guest's ivshmem device and plugging it back, over QMP (a peer moved live).

QEMU's documented procedure for the peers of a migrating master: detach their device, migrate,
and reattach it once the master's migration completed. ``device_del`` only asks: the guest OS
releases the device, and QEMU then sends DEVICE_DELETED (a guest with no OS never does). Until
then the device, and the migration blocker of a peer's ivshmem, stay.

What the device was plugged onto goes with it (``BACKENDS``): a doorbell device's chardev (its
connection to the server) and a plain device's memory-backend-file. A backend left behind still
counts in the migration stream, as a RAM block of its own ("0000:00:10.0/ivshmem0-mem"), and the
destination, started without it, refuses the stream ("Unknown ramblock", QEMU 7.2 and 10.0 alike)
while the source sees only a broken pipe; so it goes too, and comes back with the device.

QEMU 7.2's ivshmem (hw/misc/ivshmem.c), where KVM's irqfd does not carry its interrupts (TCG),
watches each of its vector eventfds in the main loop (watch_vector_notifier) and, unplugged,
closes them without unwatching them (ivshmem_exit). The next fds QEMU opens get those numbers
(a QMP connection, the migration stream, the device plugged back); once one is readable, QEMU
runs the freed device's handler on it: it reads from that fd or crashes (seen here: a segfault
in object_dynamic_cast_assert, 4 runs of 4). So ``unplug`` gives QEMU an fd nobody writes for
every eventfd number the device freed, before anything else can take it. A plain device has no
eventfds (no server, no vectors): nothing to hold.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time
import uuid
from collections import namedtuple

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPError, event_seconds


class HotplugError(FleetError):
    """The device could not be unplugged or plugged back; the message says what the guest did not do."""


def plugged(qmp, device_id):
    """Is the device (by its qdev ID) in the guest?"""
    return any(item.get('name') == device_id for item in qmp.command('qom-list', {'path': '/machine/peripheral'}))


def _chardevs(qmp):
    return [item.get('label') for item in qmp.command('query-chardev')]


def _objects(qmp):
    return [item.get('name') for item in qmp.command('qom-list', {'path': '/objects'})]


# What a device is plugged onto, by device type: the QMP command that adds it (with the
# arguments of IvshmemDevice.qmp_plug), the one that removes it (by ID), and the IDs present.
Backend = namedtuple('Backend', 'add remove present')
BACKENDS = {'doorbell': Backend('chardev-add', 'chardev-remove', _chardevs),
            'plain': Backend('object-add', 'object-del', _objects)}


def _eventfds(pid):
    """The fd numbers of QEMU process ``pid`` that are eventfds; None when /proc does not say
    (not root, or no such process)."""
    directory = '/proc/%d/fd' % pid
    found = set()
    try:
        for entry in os.listdir(directory):
            try:
                if os.readlink(os.path.join(directory, entry)) == 'anon_inode:[eventfd]':
                    found.add(int(entry))
            except OSError:
                continue  # closed meanwhile
    except OSError:
        return None
    return found


def _open_fds(pid):
    try:
        return set(int(entry) for entry in os.listdir('/proc/%d/fd' % pid))
    except OSError:
        return None


def _hold_freed_numbers(qmp, pid, freed):
    """Give QEMU (``getfd``, kept for its lifetime) both ends of pipes nobody writes until every
    number in ``freed`` is taken again: the kernel hands out the lowest free number, so a few
    fill lower gaps too. Neither end ever becomes readable or hangs up (QEMU holds both)."""
    token = uuid.uuid4().hex[:8]
    for count in range(0, 2 * len(freed) + 64, 2):
        taken = _open_fds(pid)
        if taken is None or not freed - taken:
            return
        ends = os.pipe()
        try:
            for index, end in enumerate(ends):
                qmp.command('getfd', {'fdname': 'ivshmem-fleet-held-%s-%d' % (token, count + index)}, fd=end)
        finally:
            for end in ends:
                os.close(end)


def unplug(qmp, device, timeout, pid=None):
    """Ask the guest to release ``device`` (an IvshmemDevice) and wait until QEMU removed it, then
    remove its backend (the connection to the server, or the memory backend). Returns the
    DEVICE_DELETED time, or None when the device was already gone. Raises HotplugError when the
    guest did not release it within ``timeout``. ``pid``: the QEMU's, to hold the eventfd numbers
    a doorbell device freed (see above)."""
    released_at = None
    if plugged(qmp, device.id):
        watched = _eventfds(pid) if pid and device.type == 'doorbell' else None
        try:
            qmp.command('device_del', {'id': device.id})
        except QMPError as exc:
            # Asked before (a step repeated): the request stands, wait for it like the first time.
            if 'in the process of unplug' not in str(exc):
                raise HotplugError('device_del %s: %s' % (device.id, exc))
        try:
            event = qmp.wait_event(('DEVICE_DELETED',), timeout,
                                   predicate=lambda e: (e.get('data') or {}).get('device') == device.id)
        except QMPError:
            if plugged(qmp, device.id):
                raise HotplugError('did not release its ivshmem device %s within %d s (no DEVICE_DELETED: '
                                   'its OS ignored the unplug request or has no PCI hotplug)' % (device.id, timeout))
            event = None  # gone meanwhile, its event read by another connection
        released_at = event_seconds(event) if event else time.time()
        remaining = _open_fds(pid) if watched else None
        if remaining is not None:
            _hold_freed_numbers(qmp, pid, watched - remaining)
    backend = BACKENDS[device.type]
    if device.backend_id in backend.present(qmp):
        qmp.command(backend.remove, {'id': device.backend_id})
    return released_at


def plug(qmp, device, machine):
    """Add ``device``'s backend again (a connection to its server, which gives it its ID during
    device_add; or the memory backend on the file of this host's region) and plug the device into
    the guest (the same slot). Returns the time it was plugged."""
    arguments, properties = device.qmp_plug(machine)
    backend = BACKENDS[device.type]
    try:
        if device.backend_id not in backend.present(qmp):
            qmp.command(backend.add, arguments)
        if not plugged(qmp, device.id):
            qmp.command('device_add', properties)
    except QMPError as exc:
        try:
            if not plugged(qmp, device.id) and device.backend_id in backend.present(qmp):
                qmp.command(backend.remove, {'id': device.backend_id})
        except QMPError:
            pass
        raise HotplugError('plugging %s back failed: %s' % (device.id, exc))
    return time.time()
