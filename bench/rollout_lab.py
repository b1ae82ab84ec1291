"""Rollout time on the lab against the hosts rolled and where their groups wait: three TCG virtual
machines as hypervisor hosts, the rollout playbook as an operator runs it (each host's groups
moved out, the change applied, moved back; every move verified).

Side by side in one run, on the same deployed groups (a master and a peer each, one group per
rolled host), each configuration a rollout of its own (a fresh rollout ID):
- ``1 host, spare`` (the baseline: one host, its group waiting on the spare);
- ``2 hosts, spare, serial 1``: host by host, both groups through the one spare;
- ``2 hosts, spare, serial 2``: both hosts in one batch, both groups on the spare at once (the
  placement checks its memory first);
- ``2 hosts, any host with room``: ``-e rollout_destinations=any``, serial 1, no spare: each
  group waits on another host with room, and the third host is rolled too.
Prints its markdown section for docs/benchmarks.md (bench/report.py): each configuration's time
beside the baseline's, per host rolled and per group moved.

Run (root, after scripts/bootstrap.sh): .cache/venv/bin/python bench/rollout_lab.py [RUNS]
Boots the lab (tests/lab/lab.py, 3 hosts) and takes it down at the end.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'bench'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'lab'))

from idle_guest import guest  # noqa: E402
from report_section import header, progress, ratio, table  # noqa: E402

LAB = [sys.executable, os.path.join(REPO, 'tests', 'lab', 'lab.py')]
ROLLOUT = os.path.join(REPO, 'playbooks', 'rollout.yml')
# name, groups (by host), hosts rolled, groups moved, extra variables
CONFIGURATIONS = (
    ('1 host, spare (baseline)', ('hv1',), 1, ['-e', 'ivshmem_fleet_hosts=hv1:hv3', '-e', 'spare=hv3']),
    ('2 hosts, spare, serial 1', ('hv1', 'hv2'), 2, ['-e', 'spare=hv3', '-e', 'rollout_serial=1']),
    ('2 hosts, spare, serial 2', ('hv1', 'hv2'), 2, ['-e', 'spare=hv3', '-e', 'rollout_serial=2']),
    ('2 hosts, any host with room (3 rolled)', ('hv1', 'hv2'), 3, ['-e', 'rollout_destinations=any', '-e', 'rollout_serial=1']),
)


def groups(hosts):
    return [{'name': 'r%d' % i, 'host': host, 'size': '4M', 'vectors': 1, 'master': guest('r%d-master' % i),
             'peers': [guest('r%d-peer' % i)]} for i, host in enumerate(hosts, 1)]


def playbook(inventory, extra, *args):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections'),
               ANSIBLE_PIPELINING='true', ANSIBLE_NOCOLOR='1')
    command = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', inventory,
               '-e', '@' + extra] + list(args)
    started = time.monotonic()
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise SystemExit(result.stdout.decode('utf-8', 'replace')[-4000:])
    return time.monotonic() - started


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    inventory = subprocess.run(LAB + ['up', '3'], stdout=subprocess.PIPE, check=True).stdout.decode().strip()
    times = dict((name, []) for name, _hosts, _rolled, _extra in CONFIGURATIONS)
    directory = tempfile.mkdtemp()
    try:
        playbook(inventory, _write(directory, 'all', groups(('hv1', 'hv2'))), os.path.join(REPO, 'playbooks', 'deploy.yml'))
        for run in range(runs):
            for index, (name, hosts, _rolled, extra) in enumerate(CONFIGURATIONS):
                variables = _write(directory, 'c%d' % index, groups(('hv1', 'hv2'))[:len(hosts)])
                took = playbook(inventory, variables, '-e', 'rollout_id=bench-%d-%d-%d' % (os.getpid(), run, index),
                                *(extra + [ROLLOUT]))
                times[name].append(took)
                progress('%s: %.1f s' % (name, took))
    finally:
        subprocess.run(LAB + ['down'], check=False)
    baseline = statistics.median(times[CONFIGURATIONS[0][0]])
    rows = []
    for name, hosts, rolled, _extra in CONFIGURATIONS:
        took = statistics.median(times[name])
        rows.append((name, '%.1f s' % took, ratio(took, baseline), '%.1f s' % (took / rolled), '%.1f s' % (took / len(hosts))))
    print(header('Rollout time against hosts and spares, on the lab (issue 12): `bench/rollout_lab.py`', runs,
                 '(each configuration a rollout of its own, on the same groups)'))
    print('Three TCG virtual machines (1 vCPU, 1 GiB each, on the same %d cores) as hypervisor hosts; the rollout playbook '
          'with the default change (a marker), groups of a master and a peer (32 MiB TCG guests halted by the lab idle kernel, 4 MiB shared), one per '
          'rolled host; each group moves out and back (two verified moves over TLS). The baseline rolls one host through '
          'a spare.\n' % os.cpu_count())
    print(table(('configuration', 'rollout time', 'against the baseline', 'per host rolled', 'per group moved'), rows))


def _write(directory, name, value):
    path = os.path.join(directory, name + '.json')
    with open(path, 'w') as handle:
        json.dump({'ivshmem_fleet_groups': value}, handle)
    return path


if __name__ == '__main__':
    main()
