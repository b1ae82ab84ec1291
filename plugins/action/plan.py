# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""ivshmem.fleet.plan on the controller: pure logic over the inventory and the hosts' facts, so
it needs no connection (on the lab a remote call took 3.5-6 s; a deploy or rollout plans at least
once, a rollout once per batch)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.utils.display import Display

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import GroupPlan
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import COMMON_ARGS, PLAN_ARGS
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._controller_action import ControllerAction

display = Display()


class ActionModule(ControllerAction):
    ARGUMENT_SPEC = dict(COMMON_ARGS, **PLAN_ARGS)

    def act(self, args, result, task_vars):
        try:
            planned = GroupPlan(args, Layout(args['runtime_dir']), self._task.check_mode).run('planned')
        except ValidationError as exc:
            return dict(result, failed=True, msg=str(exc), field=exc.field)
        for warning in planned.pop('warnings'):
            display.warning(warning)
        planned.pop('diff')  # nothing changes
        result.update(planned)
        return result
