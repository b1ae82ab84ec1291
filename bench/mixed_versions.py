"""A group move between QEMU versions against one between equal versions, on this machine (issue
25): two servers as two hosts (two runtime directories), a master and two peers (TCG, no OS),
the engine in-process with local host handles, TLS and the verification channel as shipped.

Side by side in one run, alternating: the baseline group moves back and forth between two hosts
on the distribution's QEMU 7.2; the mixed group between 7.2 and 10.0 (bookworm-backports,
scripts/fetch-qemu-backports.sh), its guests keeping the type 7.2 resolved. Prints its markdown
section for docs/benchmarks.md: medians of the real outages beside QEMU's figures, the ratio, and
the target (a cross-version move's master outage within 10 % of a same-version move's).

Run: PYTHONPATH=.cache/collections .cache/venv/bin/python bench/mixed_versions.py [RUNS] [SHM_MIB]
"""
import os
import statistics
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests', 'integration'))

from conftest import QEMU_BACKPORTS, lab_root  # noqa: E402
from move_lab import TwoHosts  # noqa: E402
from report_section import header, progress, ratio, table, verdict  # noqa: E402

FIGURES = (('master_outage_ms', 'master outage'), ('peer_outage_ms', 'peer outage'), ('total_time_ms', 'QEMU total time'),
           ('downtime_ms', 'QEMU downtime'), ('peers_start_ms', 'restarted peers running after the master'))


def measure(runs, shm_mib):
    """{'same': [report], 'mixed': [report]}: each group moved 2 * runs times, taking turns."""
    groups = {'same': TwoHosts(lab_root(), uuid.uuid4().hex[:6], size='%dM' % shm_mib),
              'mixed': TwoHosts(lab_root(), uuid.uuid4().hex[:6], size='%dM' % shm_mib, binaries={'b': QEMU_BACKPORTS})}
    results, where = {'same': [], 'mixed': []}, {'same': 'a', 'mixed': 'a'}
    try:
        for hosts in groups.values():
            hosts.deploy('a')
            with open(hosts.memory('a'), 'r+b') as handle:
                handle.write(os.urandom(shm_mib << 20))
        for index in range(4 * runs):
            mode = ('same', 'mixed')[index % 2]
            hosts, here = groups[mode], where[mode]
            to = 'b' if here == 'a' else 'a'
            report = hosts.engine(here, to).run()
            assert report['outcome'] == 'moved', report
            results[mode].append(report)
            progress('%s %s -> %s: master %s ms, versions %s' % (mode, here, to, report['master_outage_ms'],
                                                                 report.get('qemu_versions')))
            where[mode] = to
    finally:
        for hosts in groups.values():
            hosts.teardown()
    return results


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    shm_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    results = measure(runs, shm_mib)
    versions = results['mixed'][0].get('qemu_versions') or {}

    def median(mode, key):
        values = [r[key] for r in results[mode] if r.get(key) is not None]
        return statistics.median(values) if values else None

    rows = []
    for key, label in FIGURES:
        base, new = median('same', key), median('mixed', key)
        rows.append((label, '%.0f ms' % base, '%.0f ms' % new, ratio(new, base)))
    print(header('A move between QEMU versions (issue 25): `bench/mixed_versions.py`', 2 * runs,
                 '(each of same and mixed versions, taking turns, each group moved back and forth)'))
    print('Two servers as two hosts (two runtime directories), a master and two peers (QEMU TCG, no guest OS, 64 MiB RAM '
          'each), %d MiB of shared memory, the engine in-process (TLS, verification channel). Baseline: both hosts on QEMU '
          '%s. Mixed: host a on %s, host b on %s; the guests keep the type 7.2 resolved (pc-i440fx-7.2) both ways.\n' % (
              shm_mib, versions.get('a'), versions.get('a'), versions.get('b')))
    print(table(('median', 'same version (baseline)', 'mixed versions', 'ratio'), rows))
    same, mixed = median('same', 'master_outage_ms'), median('mixed', 'master_outage_ms')
    print(verdict('a cross-version move\'s master outage within 10 % of a same-version move\'s', mixed <= same * 1.1,
                  '%.0f ms against %.0f ms' % (mixed, same)))
    print()


if __name__ == '__main__':
    main()
