"""Deploying on the lab: one module call per host (ivshmem.fleet.host, the deploy playbook)
against the naive playbook (bench/deploy_naive.yml: a task per server and per guest), in the
same run, on the same lab host, for growing numbers of groups (a master and two peers each):
the first run and an unchanged rerun of each.

Targets (issue 12): an unchanged rerun <= 15 % of the first run's time; deploy time grows
sub-linearly with the groups on a host. Prints its markdown section for docs/benchmarks.md
(bench/report.py), the verdicts computed from the run.

Run (root, after scripts/bootstrap.sh): .cache/venv/bin/python bench/deploy_lab.py [GROUPS ...]
(default 1 3: a lab host has 1 GiB, which holds about 3 groups of three 32 MiB TCG guests).
Boots one lab host (tests/lab/lab.py) and takes it down at the end.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = [sys.executable, os.path.join(REPO, 'tests', 'lab', 'lab.py')]
RESET = os.path.join(REPO, 'molecule', 'resources', 'prepare.yml')
sys.path.insert(0, os.path.join(REPO, 'bench'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'lab'))

from idle_guest import guest  # noqa: E402
from report_section import header, progress, ratio, table, verdict  # noqa: E402


TASK_TIMES = os.path.join(tempfile.mkdtemp(), 'task_times.json')


def playbook(inventory, extra, path):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections'),
               ANSIBLE_PIPELINING='true', ANSIBLE_NOCOLOR='1', IVSHMEM_FLEET_TASK_TIMES=TASK_TIMES,
               ANSIBLE_CALLBACK_PLUGINS=os.path.join(REPO, 'bench', 'callback_plugins'), ANSIBLE_CALLBACKS_ENABLED='task_times')
    command = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', inventory, '-e', '@' + extra,
               path]
    started = time.monotonic()
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise SystemExit(result.stdout.decode('utf-8', 'replace')[-4000:])
    return time.monotonic() - started


def task_seconds():
    """The last playbook's tasks: [(name, seconds)], each task once (its slowest host)."""
    with open(TASK_TIMES) as handle:
        times = json.load(handle)
    seconds = {}
    for task in times:
        seconds[task['name']] = max(seconds.get(task['name'], 0.0), task['seconds'])
    return list(seconds.items())


def groups(count):
    return [{'name': 'd%d' % i, 'host': 'hv1', 'size': '4M', 'vectors': 1, 'master': guest('d%d-master' % i),
             'peers': [guest('d%d-peer1' % i), guest('d%d-peer2' % i)]} for i in range(count)]


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [1, 3]
    inventory = subprocess.run(LAB + ['up', '1'], stdout=subprocess.PIPE, check=True).stdout.decode().strip()
    rows = []
    try:
        extra = os.path.join(tempfile.mkdtemp(), 'groups.json')
        for count in sizes:
            with open(extra, 'w') as handle:
                json.dump({'ivshmem_fleet_groups': groups(count)}, handle)
            row = {'groups': count}
            for variant, path in (('naive', os.path.join(REPO, 'bench', 'deploy_naive.yml')),
                                  ('host', os.path.join(REPO, 'playbooks', 'deploy.yml'))):
                playbook(inventory, extra, RESET)
                first = playbook(inventory, extra, path)
                first_tasks = task_seconds()
                row[variant] = (first, playbook(inventory, extra, path))
                row[variant + '_tasks'] = (first_tasks, task_seconds())
                progress('%d groups, %s: first %.1f s, unchanged rerun %.1f s' % ((count, variant) + row[variant]))
            rows.append(row)
        playbook(inventory, extra, RESET)
    finally:
        subprocess.run(LAB + ['down'], check=False)
    table_rows = []
    for row in rows:
        (naive_first, naive_rerun), (host_first, host_rerun) = row['naive'], row['host']
        table_rows.append((row['groups'], '%.1f s' % naive_first, '%.1f s' % host_first, ratio(naive_first, host_first),
                           '%.1f s' % naive_rerun, '%.1f s' % host_rerun, ratio(naive_rerun, host_rerun),
                           '%.0f %%' % (100.0 * host_rerun / host_first)))
    print(header('Deploying a host in one call (issue 12): `bench/deploy_lab.py`', 1, '(one first run and one unchanged rerun '
                 'per variant and size)'))
    print('One lab host (a TCG VM, 1 vCPU, 1 GiB, on %d cores) and the deploy playbook as an operator runs it against the '
          'same playbook written as before `ivshmem.fleet.host`: a task per server and per guest '
          '(`bench/deploy_naive.yml`, the baseline), each from a reset host, then an unchanged rerun. Groups of a '
          'master and two peers (32 MiB TCG guests, halted by the lab idle kernel, `tests/lab/idle_guest.py`).\n' % os.cpu_count())
    print(table(('groups', 'naive first (baseline)', 'host first', 'ratio', 'naive rerun (baseline)', 'host rerun', 'ratio',
                 'host rerun / first'), table_rows))
    last = rows[-1]
    first_tasks, rerun_tasks = last['host_tasks']
    rerun = dict(rerun_tasks)
    print('Where the deploy playbook\'s time goes on the lab host, %d group%s (each task\'s own time, from its start to '
          'its result; the rest of the playbook\'s time is ansible-playbook starting and moving between plays):\n' % (
              last['groups'], '' if last['groups'] == 1 else 's'))
    print(table(('task', 'first run', 'unchanged rerun'),
                [(name, '%.1f s' % took, '%.1f s' % rerun[name] if name in rerun else 'skipped') for name, took in first_tasks]
                + [('all tasks', '%.1f s' % sum(t for _n, t in first_tasks), '%.1f s' % sum(rerun.values())),
                   ('the playbook', '%.1f s' % last['host'][0], '%.1f s' % last['host'][1])]))
    print('Against the targets:')
    worst = max(row['host'][1] / row['host'][0] for row in rows)
    print(verdict('unchanged rerun <= 15 % of the first run', worst <= 0.15, 'at most %.0f %%' % (100 * worst)))
    if len(rows) > 1:
        low, high = rows[0], rows[-1]
        growth, naive_growth = high['host'][0] / low['host'][0], high['naive'][0] / low['naive'][0]
        print(verdict('deploy time grows sub-linearly with the groups', growth < high['groups'] / low['groups'],
                      '%d groups take %.1fx the time of %d, against %.1fx for the baseline' % (
                          high['groups'], growth, low['groups'], naive_growth)))


if __name__ == '__main__':
    main()
