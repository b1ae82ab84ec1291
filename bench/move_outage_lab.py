"""The real outage of a group move on the lab: two TCG virtual machines as hypervisor hosts,
the migrate playbook as an operator runs it, moving one group back and forth.

Side by side in one run, alternating on the same group, the engine as shipped (verification
channel, TLS stream) against a baseline:
- ``relay``: ``-e ivshmem_fleet_verify_channel=false`` (the controller relays the checksums:
  two module calls on the lab's slow hosts while the master is out);
- ``clear``: ``-e ivshmem_fleet_migration_tls=false`` (the stream in clear: what TLS costs).
Prints the medians of the real outages beside QEMU's own figures, and the issue 8 targets.

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
        peers = [{'name': 'gb-peer%d' % i, 'memory': '32M', 'accel': 'tcg'} for i in (1, 2)]
        with open(extra, 'w') as handle:
            json.dump({'ivshmem_fleet_groups': [{
                'name': 'gb', 'host': 'hv1', 'size': '%dM' % shm_mib, 'vectors': 2,
                'master': {'name': 'gb-master', 'memory': '32M', 'accel': 'tcg'}, 'peers': peers}]}, handle)
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
            print('%s %s -> %s: master %s ms, peers %s ms, QEMU total %s ms, downtime %s ms, peers started %s ms' % (
                (mode, where, to) + match.groups()), flush=True)
            where = to
    finally:
        subprocess.run(LAB + ['down'], check=False)
    names = ('master_outage_ms', 'peer_outage_ms', 'total_time_ms', 'downtime_ms', 'peers_start_ms')
    print('lab: 2 TCG VMs (1 vCPU, 1 GiB each) on %d cores; %d runs each; %d MiB shared memory, master and 2 peers' % (
        os.cpu_count(), runs, shm_mib))
    print('%-20s %12s' % ('median', 'engine') + ''.join(' %12s %8s' % (b + ' (base)', 'ratio') for b in baselines))
    medians = {}
    for column, name in enumerate(names):
        new = statistics.median(r[column] for r in results['engine'])
        medians[name] = new
        line = '%-20s %12.0f' % (name, new)
        for base in (statistics.median(r[column] for r in results[b]) for b in baselines):
            line += ' %12.0f %8.2f' % (base, base / new if new else float('nan'))
        print(line)
    print('master outage beyond QEMU downtime (verification and continuing): %.0f ms' % (
        medians['master_outage_ms'] - medians['downtime_ms']))
    print('peer outage beyond QEMU total time: %.0f ms' % (medians['peer_outage_ms'] - medians['total_time_ms']))
    target = medians['total_time_ms'] + medians['peers_start_ms'] + 2000
    print('target peer outage <= total + peers start (the two at once) + 2 s = %.0f ms: %s (%.0f ms)' % (
        target, 'met' if medians['peer_outage_ms'] <= target else 'MISSED', medians['peer_outage_ms']))


if __name__ == '__main__':
    main()
