# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The readiness conditions the collection gates on, in one table, waited on by _waiter."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host
from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import ControlError, control_request
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPError
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import wait_for


def _server_listening(socket_path, pid_source):
    pid = pid_source()
    return bool(pid) and _host.unix_listening(socket_path, pid)


# Each probe's QMP answer: short, as the probe is tried again until the wait's own deadline.
PROBE_TIMEOUT = 2.0


def _qmp_answers(vm, exit_code=None, refusal=None):
    # QEMU greets on QMP before its devices are set up; only a command's answer shows
    # that the ivshmem handshake is done (see the facts file). ``refusal()``: why a server
    # refused this QEMU, if one did (it would never answer: no use waiting).
    if exit_code is not None and exit_code() is not None:
        raise _host.HostError('QEMU exited with status %s' % exit_code())
    reason = refusal() if refusal is not None else None
    if reason:
        raise _host.HostError(reason)
    with vm.qmp(timeout=PROBE_TIMEOUT) as qmp:
        return qmp.command('query-status')


def _client_id(control_path, guest):
    for client in control_request(control_path, 'status', timeout=2.0)['clients']:
        if client['name'] == guest:
            return {'id': client['id']}
    return None


def _pci_bars_assigned(vm):
    with vm.qmp(timeout=PROBE_TIMEOUT):
        registers = vm.ivshmem_registers()
    return registers if all(r['ivposition'] is not None for r in registers.values()) else None


CONDITIONS = {
    # name: (what it waits for, probe, errors that mean "not yet"); a guest's conditions take its
    # _vm.GuestHandle (named by its QMP socket).
    'server_listening': ('the server to listen on {0}', _server_listening, ()),
    'qmp_answers': ('QEMU to answer QMP on {0}', _qmp_answers, (QMPError,)),
    'client_id': ('guest {1} to be admitted by the server at {0}', _client_id, (ControlError,)),
    'bars_assigned': ('firmware to assign the ivshmem BARs (QMP {0})', _pci_bars_assigned, (QMPError,)),
}


def wait(condition, timeout, *args):
    """Wait for a named condition; returns (value, seconds waited)."""
    what, probe, retry_on = CONDITIONS[condition]
    return wait_for(what.format(*args), lambda: probe(*args), timeout, retry_on=retry_on)
