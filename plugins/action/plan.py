# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""ivshmem.fleet.plan on the controller: pure logic over the inventory and the hosts' facts, so
it needs no connection (on the lab a remote call took 3.5-6 s; a deploy or rollout plans at least
once, a rollout once per batch)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import PLAN_ARGS, GroupPlan
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout, ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._module import COMMON_ARGS

display = Display()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=dict(COMMON_ARGS, **PLAN_ARGS))
        try:
            planned = GroupPlan(args, Layout(args['runtime_dir']), self._task.check_mode).run('planned')
        except ValidationError as exc:
            return dict(result, failed=True, msg=str(exc), field=exc.field)
        for warning in planned.pop('warnings'):
            display.warning(warning)
        planned.pop('diff')  # nothing changes
        result.update(planned)
        return result
