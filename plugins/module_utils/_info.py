# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Everything ivshmem.fleet runs on this host, as facts (ivshmem.fleet.info)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host, _hugepages, _qemu_binary
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import guest_status
from ansible_collections.ivshmem.fleet.plugins.module_utils._move_journal import transitions
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import DEFAULT_QEMU
from ansible_collections.ivshmem.fleet.plugins.module_utils._region import region_status
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import server_status
from ansible_collections.ivshmem.fleet.plugins.module_utils._state_machine import StateMachine


MEMINFO = '/proc/meminfo'


def host_memory(path=MEMINFO):
    """The host's MemTotal and MemAvailable in bytes, or None where the kernel does not say."""
    values = {}
    try:
        with open(path) as handle:
            for line in handle:
                key, _sep, rest = line.partition(':')
                fields = rest.split()
                if key in ('MemTotal', 'MemAvailable') and fields and fields[0].isdigit():
                    values[key] = int(fields[0]) * (1024 if fields[1:] == ['kB'] else 1)
    except (IOError, OSError):
        return None
    if len(values) < 2:
        return None
    return {'total': values['MemTotal'], 'available': values['MemAvailable']}


class HostInfo(StateMachine):
    def __init__(self, params, layout, check_mode):
        super(HostInfo, self).__init__(check_mode)
        self.layout = layout

    def state_gathered(self):
        servers = {}
        for name in _host.names(self.layout.kind_dir('servers')):
            status = server_status(self.layout, name)
            if status is not None:
                servers[name] = status
        regions = {}
        for name in _host.names(self.layout.kind_dir('regions')):
            status = region_status(self.layout, name)
            if status is not None:
                regions[name] = status
        guests = {}
        for name in _host.names(self.layout.kind_dir('guests')):
            status = guest_status(self.layout, name)
            if status is not None:
                spec = status.pop('record').get('spec')
                spec = spec if isinstance(spec, dict) else {}  # a damaged record: shown, not fatal
                status.update(memory_mib=spec.get('memory'), cpus=spec.get('cpus'), hugepages=spec.get('hugepages'))
                guests[name] = status
        moves = dict((group, {'step': record.get('step'), 'role': record.get('role'), 'source': record.get('source'),
                              'destination': record.get('destination'), 'run_id': record.get('run_id'),
                              'holder': record.get('holder'), 'history': record.get('history')})
                     for group, record in transitions(self.layout).items())
        self.result['ansible_facts'] = {'ivshmem_fleet': {
            'runtime_dir': self.layout.runtime_dir, 'servers': servers, 'regions': regions, 'guests': guests,
            'moves': moves,
            'host_memory': host_memory(),
            'hugepages': _hugepages.pools(),
            'qemu': _qemu_binary.installed(DEFAULT_QEMU, _qemu_binary.cache_dir(self.layout, self.check_mode))}}
