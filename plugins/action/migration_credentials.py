# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""ivshmem.fleet.migration_credentials: issue a host's certificate on the controller, install it there."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.ivshmem.fleet.plugins.module_utils._options import CREDENTIALS_ARGS
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._pki import Authority, PKIError

display = Display()


def _is_address(value):
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    ARGUMENT_SPEC = CREDENTIALS_ARGS  # the module's options but files, which this plugin sets

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=self.ARGUMENT_SPEC)
        module_args = dict(state=args['state'], dest=args['dest'], group=args['group'], replace_ca=args['replace_ca'])
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
                if self._task.check_mode and not authority.exists():
                    return dict(result, changed=True, msg='would create the CA in %s and install %s\'s credentials'
                                % (authority.directory, host))
                if self._task.check_mode:
                    # Reads only: no lock, nothing kept (check mode changes nothing, here either).
                    authority.load(create=False)
                    module_args['files'] = authority.credentials(host, args['names'], addresses, keep=False)
                else:
                    with authority.locked():
                        if authority.load():
                            result['ca_created'] = authority.directory
                            display.warning(
                                'created a new migration CA in %s: every host of the fleet must get its '
                                'credentials from this CA (keep this directory, and point '
                                'ivshmem_fleet_pki_dir at it from other controllers)' % authority.directory)
                        module_args['files'] = authority.credentials(host, args['names'], addresses)
            except (PKIError, OSError) as exc:
                return dict(result, failed=True, field='pki_dir', msg='pki_dir: %s' % exc)
        result.update(self._execute_module(module_name='ivshmem.fleet.migration_credentials',
                                           module_args=module_args, task_vars=task_vars))
        return result
