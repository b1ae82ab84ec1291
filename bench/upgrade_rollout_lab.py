"""A rolling QEMU upgrade on the lab, per host, against what it is made of (issue 25): two TCG
virtual machines as hypervisor hosts on QEMU 7.2, QEMU 10.0 from the local package source the lab
image carries (/var/local/ivshmem-fleet-qemu).

In one run, on one group (a master and a peer, 32 MiB TCG guests halted by the lab idle kernel,
4 MiB shared) deployed on hv1:
- the baselines, each alone: the group's two moves (the migrate playbook, hv1 -> hv2 and back,
  both on 7.2) and the package upgrade (the rollout's change on hv2, which then serves nothing);
- the upgrade rollout of hv1 with hv2 as the spare (its group out to hv2, now on 10.0, hv1
  upgraded to 10.0, the group back, keeping pc-i440fx-7.2; the spare's own change, last, finds it
  done), against those two moves and the upgrade: what one host of a rollout costs.
Prints its markdown section for docs/benchmarks.md: the rollout's time beside the sum of the
baselines, where the rollout's time goes (per task, from bench/callback_plugins/task_times.py),
and the target (the rollout per host at most 1.5 x the two moves and the upgrade together).
An upgrade happens once per host, so one run; the lab is booted fresh and taken down at the end.

Run (root, after scripts/bootstrap.sh): .cache/venv/bin/python bench/upgrade_rollout_lab.py
"""
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'bench'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'lab'))

from idle_guest import guest  # noqa: E402
from report_section import header, progress, ratio, table, verdict  # noqa: E402

LAB = [sys.executable, os.path.join(REPO, 'tests', 'lab', 'lab.py')]
PLAYBOOKS = os.path.join(REPO, 'playbooks')
SOURCE = {'uris': 'file:/var/local/ivshmem-fleet-qemu', 'suites': './', 'trusted': True}
TASK_TIMES = os.path.join(tempfile.mkdtemp(), 'task_times.json')


def playbook(inventory, extra, *args):
    """Seconds ansible-playbook took, and each task's own time."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections'),
               ANSIBLE_PIPELINING='true', ANSIBLE_NOCOLOR='1', IVSHMEM_FLEET_TASK_TIMES=TASK_TIMES,
               ANSIBLE_CALLBACK_PLUGINS=os.path.join(REPO, 'bench', 'callback_plugins'), ANSIBLE_CALLBACKS_ENABLED='task_times')
    command = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', inventory,
               '-e', '@' + extra] + list(args)
    started = time.monotonic()
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    took = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(result.stdout.decode('utf-8', 'replace')[-4000:])
    with open(TASK_TIMES) as handle:
        return took, json.load(handle), result.stdout.decode('utf-8', 'replace')


def where_time_goes(tasks):
    """(task name, seconds) summed by task name, largest first."""
    summed = {}
    for task in tasks:
        summed[task['name']] = summed.get(task['name'], 0.0) + task['seconds']
    return sorted(summed.items(), key=lambda item: -item[1])


def main():
    inventory = subprocess.run(LAB + ['up', '2'], stdout=subprocess.PIPE, check=True).stdout.decode().strip()
    directory = tempfile.mkdtemp()
    variables = os.path.join(directory, 'groups.json')
    with open(variables, 'w') as handle:
        json.dump({'ivshmem_fleet_groups': [{'name': 'u1', 'host': 'hv1', 'size': '4M', 'vectors': 1,
                                             'master': guest('u1-master'), 'peers': [guest('u1-peer')]}],
                   'rollout_qemu_source': SOURCE}, handle)
    try:
        playbook(inventory, variables, os.path.join(PLAYBOOKS, 'deploy.yml'))
        out = playbook(inventory, variables, '-e', 'group=u1', '-e', 'to=hv2', os.path.join(PLAYBOOKS, 'migrate.yml'))[0]
        back = playbook(inventory, variables, '-e', 'group=u1', '-e', 'to=hv1', os.path.join(PLAYBOOKS, 'migrate.yml'))[0]
        progress('moves alone: %.1f s out, %.1f s back' % (out, back))
        upgrade = playbook(inventory, variables, '-e', 'ivshmem_fleet_hosts=hv2', '-e', 'rollout_qemu_upgrade=true',
                           os.path.join(REPO, 'bench', 'qemu_upgrade.yml'))[0]
        progress('upgrade alone (hv2): %.1f s' % upgrade)
        rollout, tasks, output = playbook(inventory, variables, '-e', 'ivshmem_fleet_hosts=hv1:hv2', '-e', 'spare=hv2',
                                          '-e', 'rollout_id=bench-upgrade-%d' % os.getpid(), '-e', 'rollout_qemu_upgrade=true',
                                          os.path.join(PLAYBOOKS, 'rollout.yml'))
        progress('upgrade rollout of hv1: %.1f s' % rollout)
        versions = [line.split('"msg": "', 1)[1].rstrip('"') for line in output.splitlines() if 'QEMU' in line and '->' in line
                    and '"msg": "' in line]
    finally:
        subprocess.run(LAB + ['down'], check=False)
    # The rollout rolls hv1 (two moves, one upgrade); the spare, upgraded alone before, is done.
    parts = out + back + upgrade
    print(header('A rolling QEMU upgrade on the lab, per host (issue 25): `bench/upgrade_rollout_lab.py`', 1,
                 '(an upgrade happens once per host)'))
    print('Two TCG virtual machines (1 vCPU, 1 GiB each, on the same %d cores) as hypervisor hosts on QEMU 7.2; one group '
          '(a master and a peer, 32 MiB TCG guests halted by the lab idle kernel, 4 MiB shared) on hv1. The rollout of hv1 '
          'through the spare hv2 (the group out, QEMU upgraded to 10.0 from the lab image\'s local package source, the '
          'group back keeping pc-i440fx-7.2) against its parts run alone in the same run: the two moves (the migrate '
          'playbook, hv1 -> hv2 -> hv1 on 7.2) and the package upgrade (the rollout\'s change on hv2, serving nothing, '
          'before the rollout). %s\n' % (
              os.cpu_count(), '; '.join(versions)))
    print(table(('', 'seconds', 'against the parts'), [
        ('move out alone (hv1 -> hv2)', '%.1f' % out, ''),
        ('move back alone (hv2 -> hv1)', '%.1f' % back, ''),
        ('package upgrade alone (hv2)', '%.1f' % upgrade, ''),
        ('the parts together (two moves, one upgrade)', '%.1f' % parts, '1.00'),
        ('upgrade rollout of hv1 (through the spare hv2)', '%.1f' % rollout, ratio(rollout, parts))]))
    print('Where the rollout\'s time goes (each task\'s own time, summed by task):\n')
    print(table(('task', 'seconds'), [(name, '%.1f' % seconds) for name, seconds in where_time_goes(tasks)[:12]]))
    print(verdict('the rollout per host at most 1.5 x its moves and upgrades together', rollout <= 1.5 * parts,
                  '%.1f s against %.1f s' % (rollout, 1.5 * parts)))
    print()


if __name__ == '__main__':
    main()
