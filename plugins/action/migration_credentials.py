# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""ivshmem.fleet.migration_credentials: issue a host's certificate on the controller, install it there."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible.plugins.action import ActionBase

from ansible_collections.ivshmem.fleet.plugins.module_utils._tls import DEFAULT_DIR
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._pki import DEFAULT_PKI_DIR, Authority, PKIError

ARGUMENT_SPEC = dict(
    state=dict(type='str', default='present', choices=['present', 'absent']),
    dest=dict(type='path', default=DEFAULT_DIR),
    group=dict(type='str', default='ivshmem'),
    pki_dir=dict(type='path', default=DEFAULT_PKI_DIR),
    names=dict(type='list', elements='str', default=[]),
    addresses=dict(type='list', elements='str'),
    valid_days=dict(type='int', default=825),
)


def _is_address(value):
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        module_args = dict(state=args['state'], dest=args['dest'], group=args['group'])
        if args['state'] == 'present':
            host = task_vars['inventory_hostname']
            addresses = args['addresses']
            if addresses is None:
                known = [task_vars.get('ivshmem_fleet_migration_address'), task_vars.get('ansible_host')]
                addresses = sorted(set(a for a in known if isinstance(a, str) and _is_address(a)))
            for index, address in enumerate(addresses):
                if not _is_address(address):
                    return dict(result, failed=True, field='addresses[%d]' % index,
                                msg='addresses[%d]: %r is not an IP address' % (index, address))
            if not 1 <= args['valid_days'] <= 3650:
                return dict(result, failed=True, field='valid_days', msg='valid_days: must be 1 to 3650')
            try:
                authority = Authority(args['pki_dir'], args['valid_days'])
                with authority.locked():
                    if not authority.exists() and self._task.check_mode:
                        return dict(result, changed=True, msg='would create the CA in %s and install %s\'s credentials'
                                    % (authority.directory, host))
                    created = authority.load()
                    module_args['files'] = authority.credentials(host, args['names'], addresses,
                                                                 keep=not self._task.check_mode)
            except (PKIError, OSError) as exc:
                return dict(result, failed=True, field='pki_dir', msg='pki_dir: %s' % exc)
            if created:
                result['ca_created'] = authority.directory
        result.update(self._execute_module(module_name='ivshmem.fleet.migration_credentials',
                                           module_args=module_args, task_vars=task_vars))
        return result
