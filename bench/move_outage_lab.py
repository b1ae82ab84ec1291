"""The real outage of a group move on the lab: two TCG virtual machines as hypervisor hosts,
the migrate playbook as an operator runs it, moving one group back and forth.

Side by side in one run, alternating on the same group, the engine as shipped (verification
channel, TLS stream) against a baseline:
- ``relay``: ``-e ivshmem_fleet_verify_channel=false`` (the controller relays the checksums:
  two module calls on the lab's slow hosts while the master is out);
- ``clear``: ``-e ivshmem_fleet_migration_tls=false`` (the stream in clear: what TLS costs).
Prints its markdown section for docs/benchmarks.md (bench/report.py): the medians of the real
outages beside QEMU's own figures, each baseline beside the engine with the ratio, and the issue 8
targets computed from the run.

Run (root, after scripts/bootstrap.sh):
    .cache/venv/bin/python bench/move_outage_lab.py [RUNS] [SHM_MIB] [BASELINES]
(BASELINES: relay, clear or relay,clear: the moves cycle through the engine and each baseline.)
Boots the lab (tests/lab/lab.py) and takes it down at the end.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'bench'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'lab'))

from idle_guest import guest  # noqa: E402
from report_section import header, progress, ratio, table, verdict  # noqa: E402

LAB = [sys.executable, os.path.join(REPO, 'tests', 'lab', 'lab.py')]
BASELINES = {'relay': 'ivshmem_fleet_verify_channel=false', 'clear': 'ivshmem_fleet_migration_tls=false'}
SUMMARY = re.compile(r'master out (\d+) ms, peers out (\d+) ms \(QEMU: total (\d+) ms, downtime (\d+) ms\); '
                     r'restarted peers ran (\d+) ms after the master')


def playbook(inventory, extra, *args):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections'),
               ANSIBLE_PIPELINING='true', ANSIBLE_NOCOLOR='1')
    command = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', inventory,
               '-e', '@' + extra] + list(args)
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    output = result.stdout.decode('utf-8', 'replace')
    if result.returncode != 0:
        raise SystemExit(output[-4000:])
    return output


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    shm_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    baselines = (sys.argv[3] if len(sys.argv) > 3 else 'relay').split(',')
    modes = ['engine'] + baselines
    inventory = subprocess.run(LAB + ['up', '2'], stdout=subprocess.PIPE, check=True).stdout.decode().strip()
    try:
        extra = os.path.join(tempfile.mkdtemp(), 'groups.json')
        peers = [guest('gb-peer%d' % i) for i in (1, 2)]
        with open(extra, 'w') as handle:
            json.dump({'ivshmem_fleet_groups': [{
                'name': 'gb', 'host': 'hv1', 'size': '%dM' % shm_mib, 'vectors': 2,
                'master': guest('gb-master'), 'peers': peers}]}, handle)
        playbook(inventory, extra, os.path.join(REPO, 'playbooks', 'deploy.yml'))
        subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible'), '-i', inventory, 'hv1', '-m', 'ansible.builtin.shell', '-a',
                        'dd if=/dev/urandom of=/dev/shm/ivshmem-fleet-gb bs=1M count=%d conv=notrunc,nocreat '
                        'status=none' % shm_mib], check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections')))
        results = dict((mode, []) for mode in modes)
        where = 'hv1'
        for index in range(len(modes) * runs):
            mode = modes[index % len(modes)]
            to = 'hv2' if where == 'hv1' else 'hv1'
            options = ['-e', BASELINES[mode]] if mode in BASELINES else []
            output = playbook(inventory, extra, '-e', 'group=gb', '-e', 'to=%s' % to, *options,
                              os.path.join(REPO, 'playbooks', 'migrate.yml'))
            match = SUMMARY.search(output)
            if not match:
                raise SystemExit('no outage line in:\n' + output[-3000:])
            results[mode].append([int(v) for v in match.groups()])
            progress('%s %s -> %s: master %s ms, peers %s ms, QEMU total %s ms, downtime %s ms, peers started %s ms' % (
                (mode, where, to) + match.groups()))
            where = to
    finally:
        subprocess.run(LAB + ['down'], check=False)
    labels = ('master outage', 'peer outage', 'QEMU total time', 'QEMU downtime', 'restarted peers running after the master')
    columns = ['median', 'engine']
    for base in baselines:
        columns += ['%s (baseline)' % base, 'ratio']
    rows, medians = [], {}
    for column, label in enumerate(labels):
        new = medians[label] = statistics.median(r[column] for r in results['engine'])
        row = [label, '%.0f ms' % new]
        for base in (statistics.median(r[column] for r in results[b]) for b in baselines):
            row += ['%.0f ms' % base, ratio(base, new)]
        rows.append(row)
    beyond = medians['master outage'] - medians['QEMU downtime']
    peer_target = medians['QEMU total time'] + medians['restarted peers running after the master'] + 2000
    print(header('The real outage of a group move, on the lab (issue 8): `bench/move_outage_lab.py`', runs,
                 '(each of the engine and its baselines, cycling on one group moved back and forth)'))
    print('Two TCG virtual machines (1 vCPU, 1 GiB each, on the same %d cores) as hypervisor hosts; the migrate playbook, '
          'as an operator runs it, moves a group (%d MiB, a master and two peers restarted on the destination). '
          'Baselines: `relay` (`-e %s`: the controller relays the checksums) and `clear` (`-e %s`: the stream in '
          'clear).\n' % (os.cpu_count(), shm_mib, BASELINES['relay'], BASELINES['clear']))
    print(table(columns, rows))
    print('Against the targets:')
    # The playbook's summary line has no hashing time: within 1 s the target holds whatever the hashing took.
    unknown_hashing = ': met only if hashing on both hosts took %.0f ms or more, which the playbook\'s summary does not print' % (
        beyond - 1000)
    print(verdict('master outage <= QEMU downtime + verification + 1 s', beyond <= 1000,
                  '%.0f ms beyond QEMU\'s downtime%s' % (beyond, '' if beyond <= 1000 else unknown_hashing)))
    print(verdict('peer outage <= QEMU total time + peers start (the two at once) + 2 s',
                  medians['peer outage'] <= peer_target, '%.0f ms against %.0f ms' % (medians['peer outage'], peer_target)))


if __name__ == '__main__':
    main()
