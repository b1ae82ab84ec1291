"""The real outage of a group move, on this machine: two servers as two hosts (two runtime
directories), real QEMU guests (TCG, no OS), the engine in-process with local host handles.

Side by side in one run, on the same group, moved back and forth: the engine as shipped (the
source hands its checksums to the destination over the verification channel, TLS stream) against
a baseline:
- ``relay``: the controller relays the checksums (``relay_checksums``: compare, mark, commit:
  the path of the first version, minus its Ansible task overhead), hashing with sha1 as it did;
- ``clear``: the engine with the stream in clear (what TLS costs).
Prints the medians of the master's and the peers' real outage beside QEMU's total time and
downtime, each side's hashing time, and the ratios; then checks the targets of issue 8:
master outage <= QEMU downtime + verification + 1 s; peer outage <= QEMU total + one peer start + 2 s.

Run: PYTHONPATH=.cache/collections .cache/venv/bin/python bench/move_outage.py [RUNS] [SHM_MIB] [relay|clear] [CHECKSUM]
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

from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import GuestManager  # noqa: E402


def peer_start_s(hosts):
    """One peer start on its own (the unit of the peer target), measured here."""
    layout = hosts.layouts['a']
    params = dict(name='bench-lone-peer', memory='64M', accel='tcg', timeout=60,
                  ivshmem=[{'server': 'g', 'role': 'peer', 'vectors': 2}])
    started = time.monotonic()
    GuestManager(params, layout, False).run('running')
    took = time.monotonic() - started
    GuestManager(dict(name='bench-lone-peer', timeout=10), layout, False).run('absent')
    return took


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    shm_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    baseline = sys.argv[3] if len(sys.argv) > 3 else 'relay'
    engine = dict(checksum=sys.argv[4]) if len(sys.argv) > 4 else {}
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
            where = to
    finally:
        hosts.teardown()

    def median(mode, key):
        values = [r[key] for r in results[mode]]
        return statistics.median(values)

    def median_v(mode, key):
        return statistics.median(r['verification'][key] for r in results[mode])

    print('machine: %d cores, %s; %d runs each; shared memory %d MiB, master and 2 peers (64 MiB RAM, TCG)' % (
        os.cpu_count(), os.uname().release, runs, shm_mib))
    print('%-28s %12s %12s %8s' % ('median', baseline + ' (base)', 'engine', 'ratio'))
    for key in ('master_outage_ms', 'peer_outage_ms', 'total_time_ms', 'downtime_ms', 'peers_start_ms'):
        base, new = median(baseline, key), median('engine', key)
        print('%-28s %12.0f %12.0f %8.2f' % (key, base, new, base / new if new else float('nan')))
    for key in ('source_checksum_s', 'destination_checksum_s'):
        base, new = median_v(baseline, key), median_v('engine', key)
        print('%-28s %12.3f %12.3f' % (key, base, new))
    print('one peer start alone: %.3f s' % lone)
    verification = median_v('engine', 'source_checksum_s') + median_v('engine', 'destination_checksum_s')
    master_target = median('engine', 'downtime_ms') + verification * 1000 + 1000
    peer_target = median('engine', 'total_time_ms') + lone * 1000 + 2000
    print('target master outage <= downtime + verification + 1 s = %.0f ms: %s (%.0f ms)' % (
        master_target, 'met' if median('engine', 'master_outage_ms') <= master_target else 'MISSED',
        median('engine', 'master_outage_ms')))
    print('target peer outage <= total + one peer start + 2 s = %.0f ms: %s (%.0f ms)' % (
        peer_target, 'met' if median('engine', 'peer_outage_ms') <= peer_target else 'MISSED',
        median('engine', 'peer_outage_ms')))
    per_gib = (median('engine', 'master_outage_ms') - median('engine', 'downtime_ms')) / 1000.0 / (shm_mib / 1024.0)
    print('master outage beyond QEMU downtime: %.2f s per GiB of shared memory (all of it, not only hashing)' % per_gib)


if __name__ == '__main__':
    main()
