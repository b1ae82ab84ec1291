"""What a group move costs its peers: peer_mode restart (the baseline) against live, in one run.

Two servers as two hosts on this machine (two runtime directories), a master and one peer, both
Linux test guests (tests/guest/) running the workload, the engine in-process. Each run deploys
the group on host a and moves it to b, alternating the two modes. Printed per mode (medians):
- the engine's figures: the master's outage, the peers' outage (restart: paused to the fresh QEMU
  started; live: unplugged to plugged back), QEMU's total time;
- ``peer reads again``: from the start of the move until the peer's workload on b reports the
  master's data again. A restarted peer's guest boots first; a live one never stopped;
- whether the peer kept its RAM (its ``life`` count continued on b).
Prints its markdown section for docs/benchmarks.md (bench/report.py).

Run: PYTHONPATH=.cache/collections .cache/venv/bin/python bench/peer_modes.py [RUNS]
"""
import os
import statistics
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests', 'integration'))

from conftest import lab_root, build_test_guest  # noqa: E402
from move_lab import TwoHosts  # noqa: E402
from report_section import header, progress, ratio, table  # noqa: E402
from test_live_peers import boot, console  # noqa: E402

from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import wait_for  # noqa: E402


def one_move(image, mode):
    hosts = TwoHosts(lab_root(), uuid.uuid4().hex[:6], peers=1, memory='256M', peer_mode=mode,
                     master=boot(image, 'master'), peer=boot(image, 'peer'))
    try:
        hosts.deploy('a')
        wait_for('the peer to read', lambda: len(console(hosts, 'a', 'g-peer1')['seq']) >= 2, 120, interval=0.2)
        life_before = console(hosts, 'a', 'g-peer1')['life'][-1]
        started = time.monotonic()
        report = hosts.engine('a', 'b').run()
        wait_for('the peer to read on b', lambda: console(hosts, 'b', 'g-peer1')['seq'], 120, interval=0.05,
                 max_interval=0.05)
        reads_again = time.monotonic() - started
        after = console(hosts, 'b', 'g-peer1')
        return {'master_outage_ms': report['master_outage_ms'], 'peer_outage_ms': report['peer_outage_ms'],
                'total_time_ms': report['total_time_ms'], 'peer_reads_again_ms': int(reads_again * 1000),
                'kept_ram': bool(after['life']) and after['life'][0] > life_before and not after['boots']}
    finally:
        hosts.teardown()


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    image = build_test_guest()
    results = {'restart': [], 'live': []}
    for _run in range(runs):
        for mode in results:
            results[mode].append(one_move(image, mode))
            progress('%s: %s' % (mode, results[mode][-1]))
    labels = (('master_outage_ms', 'master outage'), ('peer_outage_ms', 'peer outage, as the engine reports it'),
              ('peer_reads_again_ms', 'peer reads the shared memory again (from the move\'s start)'),
              ('total_time_ms', 'QEMU total time (master)'))
    rows = []
    for key, label in labels:
        base = statistics.median(r[key] for r in results['restart'])
        live = statistics.median(r[key] for r in results['live'])
        rows.append((label, '%d ms' % base, '%d ms' % live, ratio(live, base)))
    rows.append(('peer kept its RAM (its count continued)',) + tuple(
        '%d of %d' % (sum(r['kept_ram'] for r in results[mode]), runs) for mode in ('restart', 'live')) + ('',))
    print(header('What a move costs the peers (issue 9): `bench/peer_modes.py`', runs))
    print('Two servers as two hosts on this machine, a master and one peer, both Linux test guests (`tests/guest/`, '
          '256 MiB, TCG) running the workload, 4 MiB shared; each run deploys the group and moves it once, '
          'alternating `peer_mode: restart` (the baseline) and `live`. In `restart` the engine\'s peer outage ends '
          'when the fresh peer\'s QEMU has started (its guest then still boots: the "reads again" line); in `live` it '
          'runs from the unplug to the plug-back. "Reads again" comes from the workload\'s console reports, about '
          'one per second, so it is coarse to about 1 s. No target of its own.\n')
    print(table(('median', 'restart (baseline)', 'live', 'live / restart'), rows))


if __name__ == '__main__':
    main()
