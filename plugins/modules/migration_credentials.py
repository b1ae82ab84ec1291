#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: migration_credentials
short_description: Give a hypervisor its TLS credentials for encrypted, authenticated migrations
version_added: 1.0.0
description:
  - On the controller, keeps the fleet's migration CA in O(pki_dir) (created on first use) and
    issues this host a certificate whose subject is C(CN=<inventory name>) and whose names are the
    inventory name, O(names) and O(addresses); an issued certificate is kept beside the CA and
    reused while it still matches and has more than 30 days left.
  - On the host, installs the CA certificate and the host's certificate and key in O(dest) under
    the names QEMU's C(tls-creds-x509) reads (C(ca-cert.pem), C(server-cert.pem),
    C(server-key.pem), C(client-cert.pem), C(client-key.pem)), owned by root; certificates are
    readable by O(group), keys by root alone (a QEMU gets a copy only to load it for a migration).
  - M(ivshmem.fleet.group_migrate) uses them so that a group's migration stream is encrypted, the
    destination accepts only the expected source, and the source only the expected destination.
author:
  - ivshmem.fleet contributors (@ivshmem-fleet)
attributes:
  action:
    support: full
    description: The certificate is issued by an action plugin on the controller.
  check_mode:
    support: full
    description: Predicts whether the CA would be created or the host's files changed; changes nothing.
  diff_mode:
    support: full
    description: Lists the files that change (never their contents).
  idempotent:
    support: full
    description: A second run with the same names reuses the issued certificate and changes nothing.
  platform:
    support: full
    platforms: posix
    description: Target OS/families that can be operated against.
options:
  state:
    description: V(absent) removes the host's credentials (migrations to and from it then fail early).
    type: str
    choices: [present, absent]
    default: present
  dest:
    description: Directory on the host (root's, readable by O(group)).
    type: path
    default: /etc/ivshmem-fleet/tls
  group:
    description: The service group QEMU runs as on the host.
    type: str
    default: ivshmem
  pki_dir:
    description:
      - Directory on the controller that holds the CA key (mode 0600) and the certificates issued.
      - "Every controller of the fleet must use the same one, and it must outlive the run (in an
        execution environment, a mounted volume): a run that finds no CA here makes a new one, and
        hosts given credentials by another CA then refuse it (see O(replace_ca))."
      - Keep it as you keep other secrets of the fleet; whoever reads it can join migrations.
    type: path
    default: ~/.ivshmem-fleet/pki
  names:
    description: DNS names the certificate carries besides the inventory name.
    type: list
    elements: str
    default: []
  addresses:
    description:
      - IP addresses the certificate carries.
      - By default the host's C(ivshmem_fleet_migration_address) and C(ansible_host), where they are addresses.
    type: list
    elements: str
  valid_days:
    description: Days a new certificate is valid (1 to 3650).
    type: int
    default: 825
  replace_ca:
    description:
      - "Replace a CA certificate the host already holds from another CA. Without it such a host
        fails the task: a second CA (another controller, another O(pki_dir)) would split the fleet,
        and moves between hosts of the two CAs would fail."
    type: bool
    default: false
  files:
    description: Set by the action plugin (the PEM texts to install); not for playbooks.
    type: dict
requirements:
  - C(cryptography) on the controller (ansible-core requires it already).
notes:
  - The CA certificate is valid 10 years, host certificates O(valid_days); a run within 30 days (or
    a third of O(valid_days) when shorter) of a host certificate's end issues a new one.
seealso:
  - module: ivshmem.fleet.group_migrate
'''

EXAMPLES = r'''
- name: Migration credentials (the ivshmem.fleet.hypervisor role does this)
  ivshmem.fleet.migration_credentials:
    pki_dir: "{{ inventory_dir }}/pki"
'''

RETURN = r'''
files:
  description: The files written (or, in check mode, that would be).
  returned: always
  type: list
  elements: str
  sample: [ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem]
ca_created:
  description: The CA directory, when this run created the CA.
  returned: when the CA was created
  type: str
  sample: /root/.ivshmem-fleet/pki
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._host import HostError
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import CREDENTIALS_ARGS
from ansible_collections.ivshmem.fleet.plugins.module_utils._tls import install, remove


def main():
    module = AnsibleModule(
        argument_spec=dict(
            CREDENTIALS_ARGS,
            files=dict(type='dict', no_log=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params['state'] == 'absent':
            files = remove(params['dest'], module.check_mode)
        elif not params['files']:
            module.fail_json(msg='files: missing; call this module as a task, so that its action plugin issues them',
                             field='files')
        else:
            files = install(params['dest'], params['files'], params['group'], module.check_mode, params['replace_ca'])
    except ValidationError as exc:
        module.fail_json(msg=str(exc), field=exc.field)
    except (HostError, OSError) as exc:
        module.fail_json(msg='%s: %s' % (params['dest'], exc))
    diff = {'before': {'changed_files': []}, 'after': {'changed_files': files}}
    module.exit_json(changed=bool(files), files=files, **({'diff': diff} if module._diff else {}))


if __name__ == '__main__':
    main()
