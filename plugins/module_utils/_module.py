# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What every module shares: one way to run a manager (the common options: _options.COMMON_ARGS)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import ControlError
from ansible_collections.ivshmem.fleet.plugins.module_utils._host import HostError, check_own_directory
from ansible_collections.ivshmem.fleet.plugins.module_utils._layout import Layout
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPError
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import WaitTimeout

# Failures that are the host's or QEMU's answer, reported as a message, never a traceback.
OPERATIONAL = (HostError, QMPError, WaitTimeout, ControlError, OSError)


def run_manager(module, manager_class, state, expected_errors=()):
    """Validate, run ``manager_class(params, layout, check_mode).run(state)``, exit or fail."""
    try:
        layout = Layout(module.params['runtime_dir'])
        check_own_directory('runtime_dir', layout.runtime_dir)
        manager = manager_class(module.params, layout, module.check_mode)
    except ValidationError as exc:
        module.fail_json(msg=str(exc), field=exc.field)
    try:
        result = manager.run(state)
    except ValidationError as exc:
        module.fail_json(msg=str(exc), field=exc.field, changed=manager.changed)
    except OPERATIONAL + tuple(expected_errors) as exc:
        module.fail_json(msg=str(exc), changed=manager.changed, **manager.result)
    warnings = result.pop('warnings')
    for warning in warnings:
        module.warn(warning)
    if not module._diff:
        result.pop('diff')
    module.exit_json(**result)
