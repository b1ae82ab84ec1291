# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unplugging a guest's ivshmem device and plugging it back, over QMP (a peer moved live).

QEMU's documented procedure for the peers of a migrating master: detach their device, migrate,
and reattach it once the master's migration completed. ``device_del`` only asks: the guest OS
releases the device, and QEMU then sends DEVICE_DELETED (a guest with no OS never does). Until
then the device, and the migration blocker of a peer's ivshmem, stay.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPError, event_seconds


class HotplugError(Exception):
    """The device could not be unplugged or plugged back; the message says what the guest did not do."""


def plugged(qmp, device_id):
    """Is the device (by its qdev ID) in the guest?"""
    return any(item.get('name') == device_id for item in qmp.command('qom-list', {'path': '/machine/peripheral'}))


def _chardev_exists(qmp, chardev_id):
    return any(item.get('label') == chardev_id for item in qmp.command('query-chardev'))


def unplug(qmp, device, timeout):
    """Ask the guest to release ``device`` (an IvshmemDevice) and wait until QEMU removed it, then
    close its connection to the server. Returns the DEVICE_DELETED time, or None when the device
    was already gone. Raises HotplugError when the guest did not release it within ``timeout``."""
    released_at = None
    if plugged(qmp, device.id):
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
    chardev = '%s-chr' % device.id
    if _chardev_exists(qmp, chardev):
        qmp.command('chardev-remove', {'id': chardev})
    return released_at


def plug(qmp, device, machine):
    """Connect ``device`` to its server again and plug it into the guest (the same slot); the
    server gives it its ID during device_add. Returns the time it was plugged."""
    chardev, properties = device.qmp_plug(machine)
    try:
        if not _chardev_exists(qmp, chardev['id']):
            qmp.command('chardev-add', chardev)
        if not plugged(qmp, device.id):
            qmp.command('device_add', properties)
    except QMPError as exc:
        try:
            if not plugged(qmp, device.id) and _chardev_exists(qmp, chardev['id']):
                qmp.command('chardev-remove', {'id': chardev['id']})
        except QMPError:
            pass
        raise HotplugError('plugging %s back failed: %s' % (device.id, exc))
    return time.time()
