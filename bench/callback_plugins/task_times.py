"""Benchmark helper (not part of the collection): each task's own wall time, from the task's
start to its result, written as JSON to $IVSHMEM_FLEET_TASK_TIMES at the end of the play.
ansible-playbook's own start (Python, inventory, playbook parsing) is not in it.
Enable with ANSIBLE_CALLBACK_PLUGINS=bench/callback_plugins ANSIBLE_CALLBACKS_ENABLED=task_times."""
import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'task_times'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self._started = {}
        self._times = []

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._started[task._uuid] = time.monotonic()

    def v2_runner_on_ok(self, result):
        task = result._task
        self._times.append({'name': task.get_name(), 'seconds': time.monotonic() - self._started[task._uuid],
                            'result': result._result})

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self.v2_runner_on_ok(result)  # a failure's time counts too

    def v2_playbook_on_stats(self, stats):
        with open(os.environ['IVSHMEM_FLEET_TASK_TIMES'], 'w') as handle:
            json.dump(self._times, handle)
