# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What every module shares: one way to run a manager (the common options: _options.COMMON_ARGS)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError, ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._host import check_own_directory
from ansible_collections.ivshmem.fleet.plugins.module_utils._layout import Layout

# Failures reported as a message, never a traceback: every error of the collection (FleetError:
# the host's or QEMU's answer, a step that could not be done), and the system's (OSError).
OPERATIONAL = (FleetError, OSError)


def run_manager(module, manager_class, state):
    """Validate, run ``manager_class(params, layout, check_mode).run(state)``, exit or fail."""
    try:
        layout = Layout(module.params['runtime_dir'])
        check_own_directory('runtime_dir', layout.runtime_dir)
        manager = manager_class(module.params, layout, module.check_mode)
    except ValidationError as exc:
        module.fail_json(msg=str(exc), field=exc.field)
    except OPERATIONAL as exc:  # the host's state could not be read
        module.fail_json(msg=str(exc))
    try:
        result = manager.run(state)
    except ValidationError as exc:
        module.fail_json(msg=str(exc), field=exc.field, changed=manager.changed)
    except OPERATIONAL as exc:
        module.fail_json(msg=str(exc), changed=manager.changed, **manager.result)
    warnings = result.pop('warnings')
    for warning in warnings:
        module.warn(warning)
    if not module._diff:
        result.pop('diff')
    module.exit_json(**result)
