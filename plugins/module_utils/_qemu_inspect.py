# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Reading a guest's ivshmem state from outside, over QMP (no guest OS needed)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPError

IVSHMEM_VENDOR = 0x1af4
IVSHMEM_DEVICE = 0x1110
IVPOSITION_OFFSET = 8  # BAR0 registers: 0 INTRMASK, 4 INTRSTATUS (read clears: never read), 8 IVPOSITION
_UNASSIGNED = (-1, 0xffffffffffffffff)
_XP_RE = re.compile(r':\s*(0x[0-9a-fA-F]+)')


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


def device_role(qmp, qdev_id):
    """The resolved role of an ivshmem device, from its QOM ``master`` property."""
    value = qmp.command('qom-get', {'path': '/machine/peripheral/%s' % qdev_id, 'property': 'master'})
    return 'master' if value in (True, 'on') else 'peer'
