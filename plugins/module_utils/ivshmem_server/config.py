# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The server's settings, from its command line, and the errors that stop it at start."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError
from ansible_collections.ivshmem.fleet.plugins.module_utils._rules import shared_account
from ansible_collections.ivshmem.fleet.plugins.module_utils._sizes import round_up_power_of_two

VERSION = '1.0.0'


class ServerError(FleetError):
    """A fatal setup error, reported to whoever started the server."""


def check_accounts(accounts):
    """{name: uid} must name each uid once: the uid is how a client is told apart."""
    shared = shared_account(accounts)
    if shared:
        first, second, uid = shared
        raise ServerError('--account: uid %d given to both %s and %s; each guest needs its own account' % (
            uid, first, second))
    return dict((uid, name) for name, uid in accounts.items())


class Config:
    """The server's settings, from the command line."""

    def __init__(self, args):
        self.socket_path = args.socket
        self.control_path = args.control or args.socket + '.ctl'
        self.shm_name = args.shm_name
        self.shm_dir = args.shm_dir
        self.size = round_up_power_of_two(args.size)
        self.vectors = args.vectors
        self.pidfile = args.pidfile
        self.verbose = args.verbose
        self.pins = dict(args.pin or [])
        self.accounts = dict(args.account or [])  # guest name -> the uid it runs as
        self.admit_accounts_only = args.admit_accounts_only
        self.hold = args.hold
        self.max_clients = args.max_clients
        self.max_backlog = args.max_backlog
        self.uid = args.owner
        self.gid = args.group
        self.socket_mode = args.socket_mode
        self.memory_mode = args.memory_mode
        self.keep_memory = args.keep_memory
        self.admin_gid = args.admin_group
        self.batch_send = not args.no_sendmmsg
        taken = {}
        for name, peer_id in self.pins.items():
            if peer_id in taken:
                raise ServerError('--pin: ID %d pinned to both %s and %s' % (peer_id, taken[peer_id], name))
            taken[peer_id] = name
        check_accounts(self.accounts)
        for option, name in [('--pin', n) for n in sorted(self.pins)] + [('--hold', self.hold)]:
            if name is not None and name not in self.accounts:
                raise ServerError('%s %s: no --account %s=UID; a guest is known by its account, never by '
                                  'the name it gives itself' % (option, name, name))

    @property
    def memory_path(self):
        return os.path.join(self.shm_dir or '/dev/shm', self.shm_name)
