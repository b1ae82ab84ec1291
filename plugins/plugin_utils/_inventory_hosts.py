# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Controller side: run a module on any inventory host from one action plugin.

An action plugin gets a connection to its task's host only. Moving a group needs the source
and the destination at once, so this builds a connection per host from the host's own
variables, as ansible-core's task executor does for delegate_to, and wraps it as a *host
handle* for the move engine (``call(params) -> dict``, raising HostUnreachable or StepFailed).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import threading
import time
from contextlib import contextmanager

from ansible import constants as C
from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.loader import become_loader

from ansible_collections.ivshmem.fleet.plugins.plugin_utils._move_engine import HostUnreachable, StepFailed

# ansible-core's plugin loaders are not thread-safe: two threads loading the same plugin at once
# can see a half-imported module (no ActionModule yet). Runners are made one at a time.
_MAKING_RUNNERS = threading.Lock()


class InventoryHost:
    """Runs ``module`` on inventory host ``name``; concurrent calls get their own connections."""

    def __init__(self, action, name, task_vars, module, fixed_args=None):
        self._action = action
        self.name = name
        self._module = module
        self._fixed_args = dict(fixed_args or {})
        hostvars = task_vars['hostvars']
        if name not in hostvars:
            raise AnsibleError('%s is not a host of the inventory' % name)
        self.vars = dict(hostvars.raw_get(name))
        self.vars.setdefault('inventory_hostname', name)
        self._templar = action._templar.copy_with_new_env(available_variables=self.vars)
        self._idle, self._all, self._lock = [], [], threading.Lock()

    def var(self, key, default=None):
        """One of the host's variables, templated."""
        if key not in self.vars:
            return default
        return self._templar.template(self.vars[key])

    def send_always(self, **params):
        """Options every later call sends beside its own (the host's runtime directory and
        overrides, say: they come from its variables, so only after this handle exists)."""
        self._fixed_args.update(params)

    def call(self, params):
        with self._borrowed() as runner:
            try:
                result = runner._execute_module(module_name=self._module, module_args=dict(self._fixed_args, **params),
                                                task_vars=self.vars)
            except AnsibleConnectionFailure as exc:
                raise HostUnreachable('%s: %s' % (self.name, to_text(exc)))
            except AnsibleError as exc:
                raise StepFailed('%s: %s' % (self.name, to_text(exc)))
            finally:
                try:
                    runner.cleanup()
                except AnsibleError:
                    pass
        if result.get('unreachable'):
            raise HostUnreachable('%s: %s' % (self.name, result.get('msg')))
        if result.get('failed'):
            raise StepFailed('%s: %s' % (self.name, result.get('msg') or result.get('module_stderr') or result))
        return result

    def clock(self):
        """(before, the host's time.time(), after), before and after on the controller's clock: the
        host's clock read with the cheapest command there is, for comparing its timestamps with
        another host's. A module's round trip is seconds on a slow host, most of it the module
        starting, which the midpoint of such a trip cannot see; ``date`` takes milliseconds."""
        with self._borrowed() as runner:
            try:
                before = time.time()
                result = runner._low_level_execute_command('date +%s.%N', sudoable=False)
                after = time.time()
            except AnsibleError as exc:
                raise HostUnreachable('%s: %s' % (self.name, to_text(exc)))
        try:
            return before, float(to_text(result.get('stdout')).strip()), after
        except ValueError:
            raise StepFailed('%s: no clock reading from date: %r' % (self.name, result.get('stdout')))

    def close(self):
        with self._lock:
            runners = list(self._all)
        for runner in runners:
            try:
                runner._connection.close()
            except AnsibleError:
                pass

    @contextmanager
    def _borrowed(self):
        """A runner of this host's, an idle one or a new one, handed back when done: concurrent
        calls each get their own."""
        with self._lock:
            runner = self._idle.pop() if self._idle else None
        if runner is None:
            with _MAKING_RUNNERS:
                runner = self._runner()
            with self._lock:
                self._all.append(runner)
        try:
            yield runner
        finally:
            with self._lock:
                self._idle.append(runner)

    def _runner(self):
        """A fresh connection to the host and an action object to run modules over it."""
        # Each runner templates with its own copy: runners work from several threads at once.
        action, cvars = self._action, self.vars
        templar = action._templar.copy_with_new_env(available_variables=cvars)
        task = action._task.copy(exclude_parent=True, exclude_tasks=True)
        task.delegate_to = None
        # The engine asks only read-only steps in check mode (ivshmem.fleet.move_host has no check mode).
        task.check_mode = False
        play_context = action._play_context.set_task_and_variable_override(task=task, variables=cvars, templar=templar)

        def var(key, default=None):
            return templar.template(cvars[key]) if key in cvars else default

        connection_name = var('ansible_connection') or task.connection or C.DEFAULT_TRANSPORT
        play_context.connection = connection_name
        connection = action._shared_loader_obj.connection_loader.get(
            connection_name, play_context, new_stdin=None, task_uuid=task._uuid, ansible_playbook_pid=to_text(os.getppid()))
        if connection is None:
            raise AnsibleError('connection plugin %r not found (host %s)' % (connection_name, self.name))
        become = boolean(var('ansible_become', task.become), strict=False)
        if become:
            connection.set_become_plugin(become_loader.get(var('ansible_become_method') or task.become_method))
        task_keys = task.dump_attrs()
        task_keys['timeout'] = play_context.timeout
        task_keys.pop('retries', None)
        connection.set_options(task_keys=task_keys, var_options=connection._resolve_option_variables(cvars, templar))
        for plugin_type, plugin in (('shell', connection._shell), ('become', connection.become)):
            if plugin is None:
                continue
            names = C.config.get_plugin_vars(plugin_type, plugin._load_name)
            plugin.set_options(task_keys=task_keys, var_options=dict((k, templar.template(cvars[k])) for k in names if k in cvars))
        return action._shared_loader_obj.action_loader.get(
            'ansible.legacy.normal', task=task, connection=connection, play_context=play_context,
            loader=action._loader, templar=templar, shared_loader_obj=action._shared_loader_obj)
