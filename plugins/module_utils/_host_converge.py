# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""One host converged in one call (ivshmem.fleet.host): servers and regions, then masters, then peers.

Every server and guest is validated first with the very option sets the server and guest
modules declare (_options.SERVER_ARGS, GUEST_ARGS), so bad input fails before anything changes and names
its item (``guests[2].memory``). Then, in order: the service account and the runtime directory,
every server, every guest with a master device (gated: its ID on a builtin server must be 0),
and the other guests (gated on the IDs their servers pin for them). The same managers as the
per-item modules do the work, so one call and many calls converge to the same host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.ivshmem.fleet.plugins.module_utils import _groups, _host, _hugepages, _qemu_binary, _tls
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError, ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import GuestManager
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import SERVICE_GROUP, check_list, prefixed
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import DEFAULT_QEMU, GUEST_ARGS, REGION_ARGS, SERVER_ARGS
from ansible_collections.ivshmem.fleet.plugins.module_utils._region import RegionManager
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import ServerManager
from ansible_collections.ivshmem.fleet.plugins.module_utils._state_machine import StateMachine

_VALIDATORS = {
    'servers': ArgumentSpecValidator(SERVER_ARGS, required_if=[('implementation', 'qemu', ['binary'])]),
    'guests': ArgumentSpecValidator(GUEST_ARGS),
    'regions': ArgumentSpecValidator(REGION_ARGS),
}


class GateError(FleetError):
    """A gate did not hold (a master without ID 0, a peer without its pinned ID)."""


def _validated(kind, items, account, overrides):
    checked = []
    for index, item in enumerate(check_list(kind, items)):
        field = '%s[%d]' % (kind, index)
        if not isinstance(item, dict):
            raise ValidationError(field, 'must be a dict of the %s module\'s options' % kind[:-1])
        # The host's service account, unless the item names its own; this host's overrides over it.
        result = _VALIDATORS[kind].validate(dict(dict(account, **item), **overrides))
        if result.error_messages:
            raise ValidationError(field, '; '.join(result.error_messages))
        checked.append(result.validated_parameters)
    names = [item['name'] for item in checked]
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise ValidationError('%s[%d].name' % (kind, index), '%s is listed twice' % name)
    return checked


def _is_master(guest):
    return any((device or {}).get('role') == 'master' for device in guest.get('ivshmem') or [])


class HostConverger(StateMachine):
    """Servers and guests of one host as listed; those not listed are left alone."""

    def __init__(self, params, layout, check_mode):
        super(HostConverger, self).__init__(check_mode)
        self.layout = layout
        # One account for every item, if asked; by default each runs under its own.
        account = dict((key, params[key]) for key in ('user', 'group') if params.get(key))
        self.group = params.get('group') or (params.get('user') or SERVICE_GROUP)
        servers = _validated('servers', params.get('servers'), account,
                             _groups.overrides('server_overrides', params.get('server_overrides')))
        # A plain group's memory: no service account (its group is the region's own); where this
        # host keeps it (the server overrides of where memory lives), its guests map it.
        regions, moved = _groups.region_moves(check_list('regions', params.get('regions')), params.get('server_overrides'))
        regions = _validated('regions', regions, {}, {})
        guests = _validated('guests', [_groups.relocated(guest, moved) for guest in check_list('guests', params.get('guests'))],
                            account,
                            _groups.overrides('guest_overrides', params.get('guest_overrides')))
        for server in servers:
            # A server knows its guests by account: those that run as a given one are told so.
            known = set((server.get('pins') or {})) | set(server.get('admit') or []) | set([server.get('hold_for')])
            accounts = dict((guest['name'], guest['user']) for guest in guests
                            if guest.get('user') and guest['name'] in known)
            if accounts:
                server['accounts'] = dict(accounts, **(server.get('accounts') or {}))
        self.hugepages = _hugepages.pool_request(params.get('hugepages'), params.get('hugepages_spare'))
        self.servers, self.regions, self.masters, self.peers = [], [], [], []
        for index, region in enumerate(regions):
            self.regions.append(('regions[%d]' % index, region, self._manager(RegionManager, 'regions', index, region)))
        # Build every manager now: each validates its spec, so nothing starts before all are good.
        for index, server in enumerate(servers):
            self.servers.append(('servers[%d]' % index, server, self._manager(ServerManager, 'servers', index, server)))
        for index, guest in enumerate(guests):
            entry = ('guests[%d]' % index, guest, self._manager(GuestManager, 'guests', index, guest))
            (self.masters if _is_master(guest) else self.peers).append(entry)
        self.pins = dict((server['name'], server.get('pins') or {}) for server in servers
                         if server['implementation'] == 'builtin')

    def _manager(self, manager_class, kind, index, params):
        return prefixed('%s[%d]' % (kind, index), lambda: manager_class(params, self.layout, self.check_mode))

    def state_present(self):
        self.before, self.after = ({'servers': {}, 'regions': {}, 'guests': {}},
                                   {'servers': {}, 'regions': {}, 'guests': {}})
        self._runtime_dir()  # first: nothing is written into a directory that is not the collection's
        # Said here so that a role need not make a call of its own to learn it (ivshmem.fleet.hypervisor
        # installs QEMU where this is null).
        qemu = _qemu_binary.installed(DEFAULT_QEMU, _qemu_binary.cache_dir(self.layout, self.check_mode))
        self.result.update(servers={}, regions={}, guests={}, qemu_binary=DEFAULT_QEMU if qemu else None, qemu=qemu)
        if _host.ensure_group(self.group, self.check_mode):  # the migration credentials' group too
            self.changed = True
        if not self.check_mode:  # key copies a run killed mid-handover left readable by a guest
            _tls.sweep_handover(self.layout.tls_handover())
        self._hugepage_pools()  # before any memory on them is made
        for field, params, manager in self.servers + self.regions:
            self._run(field, 'servers' if field.startswith('servers') else 'regions', params, manager)
        for field, params, manager in self.masters + self.peers:
            guest = self._run(field, 'guests', params, manager)
            self._gate(field, params, guest)

    def _runtime_dir(self):
        """The collection's own directory: root's, 0755. One that exists is taken only when it is
        root's and nobody else may write in it (_host.check_own_directory)."""
        path = self.layout.runtime_dir
        info = _host.check_own_directory('runtime_dir', path)
        if info is not None and (info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0o755):
            return
        self.changed = True
        if not self.check_mode:
            _host.ensure_dir(path, 0o755)
            os.lchown(path, 0, 0)
            os.chmod(path, 0o755)

    def _hugepage_pools(self):
        """The pools at least as large as asked (grown, never shrunk), said in the result."""
        changes = _hugepages.pool_changes(self.hugepages)
        if changes:
            self.changed = True
            self.before['hugepages'] = dict((size, pages) for size, (pages, _asked) in changes.items())
            self.after['hugepages'] = dict((size, asked) for size, (_pages, asked) in changes.items())
            if not self.check_mode:
                for size, (_pages, asked) in sorted(changes.items()):
                    _hugepages.grow_pool(size, asked)
        self.result['hugepages'] = dict((size, dict(pool, asked=self.hugepages.get(size)))
                                        for size, pool in _hugepages.pools().items())

    def _run(self, field, kind, params, manager):
        result = prefixed(field, lambda: manager.run(params['state']))
        self.changed = self.changed or result['changed']
        self.warnings.extend(result['warnings'])
        self.before[kind][params['name']] = result['diff']['before']
        self.after[kind][params['name']] = result['diff']['after']
        found = result.get(kind[:-1])
        self.result[kind][params['name']] = found
        return found

    def _gate(self, field, params, guest):
        """A master holds ID 0 on its builtin server; a peer the ID its server pins for it."""
        if self.check_mode or params['state'] != 'running' or not guest:
            return
        for index, device in enumerate(guest.get('ivshmem') or []):
            server = device.get('server')
            if server not in self.pins:
                continue  # an upstream server or a plain memory file: no IDs to hold to
            have = device.get('server_id')
            want = 0 if device.get('role') == 'master' else self.pins[server].get(params['name'])
            if want is not None and have != want:
                raise GateError('%s.ivshmem[%d]: %s has ID %s on server %s, not %s; the guests after it were '
                                'not started' % (field, index, params['name'], have, server, want))
