"""The real outage of a group move, on this machine: two servers as two hosts (two runtime
directories), real QEMU guests (TCG, no OS), the engine in-process with local host handles.

Side by side in one run, on the same group, moved back and forth: the engine as shipped (the
source hands its checksums to the destination over the verification channel, TLS stream) against
a baseline:
- ``relay``: the controller relays the checksums (``relay_checksums``: compare, mark, commit:
  the path of the first version, minus its Ansible task overhead), hashing with sha1 as it did;
- ``clear``: the engine with the stream in clear (what TLS costs).
Prints its markdown section for docs/benchmarks.md (bench/report.py): per size, the medians of
the master's and the peers' real outage beside QEMU's total time and downtime, each side's
hashing time, baseline beside engine with the ratio; then the targets of issue 8, computed from
the run: master outage <= QEMU downtime + verification + 1 s; peer outage <= QEMU total + one
peer start + 2 s; verification adds <= 0.2 s per GiB to the master outage.

Run: PYTHONPATH=.cache/collections .cache/venv/bin/python bench/move_outage.py [RUNS] [SHM_MIB[,SHM_MIB]] [relay|clear] [CHECKSUM]
(CHECKSUM: the engine's algorithm, by default the collection's)
"""
import os
import statistics
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests', 'integration'))

from conftest import lab_root  # noqa: E402
from move_lab import TwoHosts  # noqa: E402
from report_section import header, progress, ratio, table, verdict  # noqa: E402

from ansible_collections.ivshmem.fleet.plugins.module_utils._checksum import DEFAULT as DEFAULT_CHECKSUM  # noqa: E402
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import GuestManager  # noqa: E402


def peer_start_s(hosts):
    """One peer start on its own (the unit of the peer target), measured here: the group's last
    peer stopped and started again (the server admits only the group's own accounts)."""
    layout = hosts.layouts['a']
    peer = dict(hosts.group['peers'][-1], timeout=60)
    GuestManager(peer, layout, False).run('stopped')
    started = time.monotonic()
    GuestManager(peer, layout, False).run('running')
    return time.monotonic() - started


BASELINES = {
    'relay': ('relay, sha1', 'the controller relays the checksums (compare, mark, commit: the first version\'s path without '
              'its Ansible task overhead), hashing with sha1 as the first version did'),
    'clear': ('clear', 'the same engine with the stream in clear (what TLS costs)'),
}
FIGURES = (('master_outage_ms', 'master outage'), ('peer_outage_ms', 'peer outage'), ('total_time_ms', 'QEMU total time'),
           ('downtime_ms', 'QEMU downtime'), ('peers_start_ms', 'restarted peers running after the master'))


def measure(runs, shm_mib, baseline, engine):
    """Moves back and forth, alternating baseline and engine: ({mode: [report]}, one peer start in s)."""
    baseline_options = {'relay': dict(relay_checksums=True, checksum='sha1'), 'clear': dict(engine, tls_dirs=None)}[baseline]
    hosts = TwoHosts(lab_root(), uuid.uuid4().hex[:6], size='%dM' % shm_mib)
    results = {baseline: [], 'engine': []}
    try:
        hosts.deploy('a')
        with open(hosts.memory('a'), 'r+b') as handle:
            handle.write(os.urandom(shm_mib << 20))
        where = 'a'
        lone = peer_start_s(hosts)
        for index in range(2 * runs):
            mode = baseline if index % 2 == 0 else 'engine'
            to = 'b' if where == 'a' else 'a'
            report = hosts.engine(where, to, **(baseline_options if mode == baseline else engine)).run()
            assert report['outcome'] == 'moved', report
            results[mode].append(report)
            progress('%d MiB %s %s -> %s: master %s ms' % (shm_mib, mode, where, to, report['master_outage_ms']))
            where = to
    finally:
        hosts.teardown()
    return results, lone


def size_section(shm_mib, baseline, results, lone):
    """One size's table and its verdicts."""
    def median(mode, key):
        return statistics.median(r[key] for r in results[mode])

    def median_v(mode, key):
        return statistics.median(r['verification'][key] for r in results[mode])

    rows = []
    for key, label in FIGURES:
        base, new = median(baseline, key), median('engine', key)
        rows.append((label, '%.0f ms' % base, '%.0f ms' % new, ratio(base, new)))
    for key, label in (('source_checksum_s', 'source hashing (from the switchover gate)'),
                       ('destination_checksum_s', 'destination hashing')):
        rows.append((label, '%.3f s' % median_v(baseline, key), '%.3f s' % median_v('engine', key), ''))
    master, peer = median('engine', 'master_outage_ms'), median('engine', 'peer_outage_ms')
    verification = median_v('engine', 'source_checksum_s') + median_v('engine', 'destination_checksum_s')
    master_target = median('engine', 'downtime_ms') + verification * 1000 + 1000
    peer_target = median('engine', 'total_time_ms') + lone * 1000 + 2000
    per_gib = (master - median('engine', 'downtime_ms')) / 1000.0 / (shm_mib / 1024.0)
    out = ['### %d MiB of shared memory' % shm_mib, '',
           table(('median', '%s (baseline)' % BASELINES[baseline][0], 'engine', 'ratio'), rows),
           'Targets (issue 8), with one peer start measured alone at %.2f s:' % lone,
           verdict('master outage <= QEMU downtime + verification + 1 s', master <= master_target,
                   '%.0f ms against %.0f ms' % (master, master_target)),
           verdict('peer outage <= QEMU total + one peer start + 2 s', peer <= peer_target,
                   '%.0f ms against %.0f ms' % (peer, peer_target)),
           verdict('verification adds <= 0.2 s per GiB to the master outage', per_gib <= 0.2,
                   'the master is out %.2f s per GiB beyond QEMU\'s downtime, all of it counted, not only hashing' % per_gib),
           '']
    return '\n'.join(out)


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    sizes = [int(size) for size in (sys.argv[2] if len(sys.argv) > 2 else '64').split(',')]
    baseline = sys.argv[3] if len(sys.argv) > 3 else 'relay'
    engine = dict(checksum=sys.argv[4]) if len(sys.argv) > 4 else {}
    measured = [(size,) + measure(runs, size, baseline, engine) for size in sizes]
    print(header('The real outage of a group move, on one machine (issue 8): `bench/move_outage.py`, baseline %s' % baseline,
                 runs, '(each of engine and baseline, alternating on one group moved back and forth)'))
    print('Two servers as two hosts (two runtime directories), a master and two peers (QEMU TCG, no guest OS, 64 MiB '
          'RAM each), the engine in-process with local host handles. The engine as shipped (verification channel, '
          'TLS stream, %s chunks) against the baseline: %s.\n' % (engine.get('checksum', DEFAULT_CHECKSUM), BASELINES[baseline][1]))
    for size, results, lone in measured:
        print(size_section(size, baseline, results, lone))


if __name__ == '__main__':
    main()
