"""How many clients an ivshmem server takes, and how fast: ours against QEMU's upstream server,
in the same run, with the same probe.

For each vector count, each server gets clients one at a time (each reads every message, as
QEMU does) until the target count, the first refusal, or the first client dropped. Printed per
server: clients admitted, handshake latency p50/p99 (connect to the last own vector), and the
server's RSS and open fds at the end. Then, for our server only (upstream has no status), the
p99 of an unrelated status request while a burst of clients joins, beside the same figure on
the idle server before and after it. Prints its markdown section for docs/benchmarks.md
(bench/report.py), the target verdicts computed from the run.

Run: PYTHONPATH=.cache/collections .cache/venv/bin/python bench/server_scale.py [--clients 1000]
     [--vectors 1,2,16,64] [--runs 3]
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests', 'integration'))

from ivshmem_probe import Probe  # noqa: E402

from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import (  # noqa: E402
    ControlError, control_request)
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import wait_for  # noqa: E402
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server import loop as server_loop  # noqa: E402

sys.path.insert(0, HERE)
from report_section import header, progress, ratio, table, verdict  # noqa: E402

UPSTREAM = os.environ.get('IVSHMEM_FLEET_UPSTREAM_SERVER', os.path.join(REPO, '.cache', 'upstream', 'bin', 'ivshmem-server'))
JOIN_TIMEOUT = 10.0
ROUND_SLICE = server_loop._ROUND_SLICE
# A status request during a burst may wait for the round in progress (a time slice and the one
# admission or turn that ends it) on top of its own cost, which is the idle figure.
BURST_TOLERANCE = 2.0
KINDS = ('upstream', 'ours')
# Where each process runs. On a machine this small the kernel wakes a server on the core of the
# client that connected, and the client then waits for the server's whole turn: the figure would
# be the scheduler's. Pinned, the probe (and the status pinger) get one core and the server the
# other, as a hypervisor's guests and its server do not share one core. The groups' latency is
# also measured unpinned, and printed beside it.
PINNED = os.cpu_count() >= 2
PROBE_CPU, SERVER_CPU = 0, 1


def pinned(pin):
    """Pin this process (the probe) to its core, or let it run anywhere."""
    os.sched_setaffinity(0, {PROBE_CPU} if pin else set(range(os.cpu_count())))


def start_server(kind, directory, vectors, pin=PINNED):
    sock = os.path.join(directory, '%s-%d.sock' % (kind, vectors))
    name = 'bench-scale-%s-%d-%d' % (kind, vectors, os.getpid())
    common = ['-F', '-S', sock, '-M', name, '-l', '1M', '-n', str(vectors)]
    if kind == 'ours':
        argv = [sys.executable, '-c', 'import sys; from ansible_collections.ivshmem.fleet.plugins.module_utils.'
                'ivshmem_server.cli import main; sys.exit(main())'] + common
    else:
        argv = [UPSTREAM] + common
    cores = {SERVER_CPU} if pin else set(range(os.cpu_count()))
    process = subprocess.Popen(argv, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               preexec_fn=lambda: os.sched_setaffinity(0, cores))
    wait_for('the %s server' % kind, lambda: os.path.exists(sock), 10)
    return process, sock


def resources(pid):
    with open('/proc/%d/status' % pid) as status:
        rss = [int(line.split()[1]) for line in status if line.startswith('VmRSS:')][0]
    return rss / 1024.0, len(os.listdir('/proc/%d/fd' % pid))


def percentile(values, share):
    """The value at ``share`` (0..1) of the sorted values, nearest rank."""
    if not values:
        return float('nan')
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def join(probe, target):
    """Clients one at a time until ``target``; returns their latencies and why it stopped."""
    latencies, reason = [], 'reached %d' % target
    for _index in range(target):
        try:
            client = probe.connect()
        except OSError as exc:
            return latencies, 'connect failed: %s' % exc
        if not probe.until(lambda client=client: probe.settled(client), JOIN_TIMEOUT):
            return latencies, 'handshake not done in %.0f s' % JOIN_TIMEOUT
        if client.closed:
            return latencies, 'client %d refused' % len(probe.clients)
        latencies.append(client.latency)
        probe.pump(0)
        if len(probe.alive()) != len(probe.clients):
            return latencies, 'an existing client was dropped at client %d' % len(probe.clients)
    return latencies, reason


def fill(kind, directory, vectors, target):
    """Clients one at a time; returns admitted, latencies (s), stop reason, RSS MiB, fds."""
    process, sock = start_server(kind, directory, vectors)
    probe = Probe(sock, vectors)
    try:
        latencies, reason = join(probe, target)
        probe.until(lambda: False, 0.2)  # let announcements land before counting
        admitted = len([c for c in probe.alive() if c.joined is not None])
        rss, fds = resources(process.pid)
    finally:
        probe.close()
        process.terminate()
        process.wait(10)
    return admitted, latencies, reason, rss, fds


def small_groups(kind, directory, vectors, count, rounds, pin=PINNED):
    """Handshake latencies of groups of ``count`` clients, joined ``rounds`` times on one server."""
    pinned(pin)
    process, sock = start_server(kind, directory, vectors, pin)
    pooled = []
    try:
        for _round in range(rounds):
            probe = Probe(sock, vectors)
            pooled += join(probe, count)[0]
            probe.close()
            time.sleep(0.05)  # the server sees the group leave
    finally:
        process.terminate()
        process.wait(10)
        pinned(PINNED)
    return pooled


def ping(control, seconds):
    """Child process: status requests back to back (10 ms apart); prints their latencies, and
    whether they ran at real-time priority: then the probe, on the same core, cannot delay them,
    and what they measure is the server's wait alone."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        realtime = True
    except OSError:  # not root: the figures then include the probe's turns on the core
        realtime = False
    latencies, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            control_request(control, 'status', timeout=5.0)
            latencies.append(time.monotonic() - start)
        except ControlError:
            latencies.append(5.0)
        time.sleep(0.01)
    print(json.dumps({'realtime': realtime, 'latencies': latencies}))


def pings(pinger):
    """Run the status requester; returns (latencies, whether it ran at real-time priority)."""
    result = json.loads(subprocess.run(pinger, capture_output=True, check=True, env=os.environ).stdout)
    return result['latencies'], result['realtime']


def status_during_burst(directory, vectors, resident, burst, seconds):
    """p50/p99 of status requests while ``burst`` clients join a server with ``resident``, beside
    the same on the idle server before (``resident`` clients) and after (all of them: a status
    lists every client, so it costs more with more of them)."""
    process, sock = start_server('ours', directory, vectors)
    probe = Probe(sock, vectors)
    pinger = [sys.executable, os.path.abspath(__file__), '--ping', sock + '.ctl', str(seconds)]
    try:
        for _index in range(resident):
            client = probe.connect()
            probe.until(lambda client=client: probe.settled(client), JOIN_TIMEOUT)
        before, realtime = pings(pinger)
        child = subprocess.Popen(pinger, stdout=subprocess.PIPE, env=os.environ)
        time.sleep(0.2)
        joined = [probe.connect() for _index in range(burst)]
        probe.until(lambda: all(probe.settled(c) for c in joined) and child.poll() is not None, seconds + 30)
        busy = json.loads(child.communicate()[0])['latencies']
        admitted = len([c for c in joined if c.joined is not None])
        probe.until(lambda: all(probe.knows_everyone(c) for c in probe.alive()), 30)
        after = pings(pinger)[0]
    finally:
        probe.close()
        process.terminate()
        process.wait(10)
    return before, busy, after, admitted, realtime


def ms(value):
    return '%.1f ms' % (value * 1000)


def measure(directory, vectors, clients, runs):
    """Both servers, ``runs`` times each, then the same-size groups; returns {kind: row}."""
    rows = dict((kind, []) for kind in KINDS)
    for _run in range(runs):
        for kind in KINDS:
            rows[kind].append(fill(kind, directory, vectors, clients))
            progress('%d vectors, %s: %d admitted (%s)' % (vectors, kind, rows[kind][-1][0], rows[kind][-1][2]))
    # Latency where both servers work: groups as large as upstream took, many times over (a few
    # handshakes per run would be noise).
    count = min(run[0] for run in rows['upstream'])
    rounds = max(10, 300 // max(count, 1))
    result = {}
    for kind in KINDS:
        pooled = small_groups(kind, directory, vectors, count, rounds)
        shared = small_groups(kind, directory, vectors, count, rounds, pin=False) if PINNED else pooled
        runs_of = rows[kind]
        admitted = sorted(run[0] for run in runs_of)
        result[kind] = {
            'admitted': admitted, 'reason': runs_of[-1][2],
            'p50': statistics.median(percentile(run[1], 0.5) for run in runs_of),
            'p99': statistics.median(percentile(run[1], 0.99) for run in runs_of),
            'groups': (percentile(pooled, 0.5), percentile(pooled, 0.99), rounds, count),
            'shared': (percentile(shared, 0.5), percentile(shared, 0.99)),
            'rss': statistics.median(run[3] for run in runs_of), 'fds': statistics.median(run[4] for run in runs_of)}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--clients', type=int, default=1000)
    parser.add_argument('--vectors', default='1,2,16,64')
    parser.add_argument('--runs', type=int, default=3, help='runs per server and vector count (medians printed)')
    parser.add_argument('--ping', nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ping:
        return ping(args.ping[0], float(args.ping[1]))
    if not os.access(UPSTREAM, os.X_OK):
        sys.exit('upstream ivshmem-server missing at %s: run scripts/build-upstream-ivshmem.sh' % UPSTREAM)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the probe holds one socket per client
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    directory = tempfile.mkdtemp(prefix='ivshmem-bench-')
    pinned(PINNED)
    vector_counts = [int(v) for v in args.vectors.split(',')]
    try:
        results = dict((vectors, measure(directory, vectors, args.clients, args.runs)) for vectors in vector_counts)
        bursts = [(vectors, resident, burst) + status_during_burst(directory, vectors, resident, burst, 3.0)
                  for vectors, resident, burst in ((2, 200, 200), (64, 50, 50))]
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print(header('The server at scale (issue 11): `bench/server_scale.py`', args.runs,
                 '(fd limit %d for both servers)' % hard))
    where = ('The probe (and the status requests) run on core %d and the server on core %d, but in the rows marked '
             'shared cores.' % (PROBE_CPU, SERVER_CPU) if PINNED else 'The probe shares the machine\'s cores with the server.')
    print('Our server against QEMU\'s upstream `ivshmem-server` (built from Debian\'s QEMU source by '
          '`scripts/build-upstream-ivshmem.sh`), in the same run, with the same probe '
          '(`tests/integration/ivshmem_probe.py`): clients in one process, each reading every message as QEMU\'s '
          'device does and closing each fd at once. Clients join one at a time up to %d, until one is refused or a '
          'handshake stalls for %.0f s. Handshake latency runs from `connect()` to the client\'s last own vector. '
          '"In groups" compares latency where both servers work: groups as large as upstream took, joined many '
          'times over on one server, pooled (rounds x clients). %s\n' % (args.clients, JOIN_TIMEOUT, where))
    rows = []
    for vectors in vector_counts:
        for kind in KINDS:
            row = results[vectors][kind]
            admitted = row['admitted']
            rows.append((vectors, kind, '%d' % admitted[0] if admitted[0] == admitted[-1] else '%d to %d' % (
                admitted[0], admitted[-1]), row['reason'], ms(row['p50']), ms(row['p99']),
                '%s / %s (%d x %d)' % (ms(row['groups'][0]), ms(row['groups'][1]), row['groups'][2], row['groups'][3]),
                '%.1f MiB' % row['rss'], '%d' % row['fds']))
    print(table(('vectors', 'server', 'clients admitted', 'stopped because', 'handshake p50', 'p99',
                 'p50 / p99 in groups of upstream\'s size', 'RSS', 'fds'), rows))
    latency_rows = []
    for vectors in vector_counts:
        up, ours = results[vectors]['upstream'], results[vectors]['ours']
        for label, key in (('own cores', 'groups'), ('shared cores', 'shared')) if PINNED else (('', 'groups'),):
            latency_rows.append(('%d (%d x %d)%s' % (vectors, up['groups'][2], up['groups'][3], ', ' + label if label else ''),
                                 '%s / %s' % (ms(up[key][0]), ms(up[key][1])), '%s / %s' % (ms(ours[key][0]), ms(ours[key][1])),
                                 '%s, %s' % (ratio(ours[key][0], up[key][0]), ratio(ours[key][1], up[key][1]))))
    print('Handshake latency in groups of upstream\'s size%s:\n' % (
        ', the server on a core of its own (the probe on core %d, the server on core %d) and, beside it, both free to run '
        'on either core (the kernel then often wakes the server on the probe\'s core, and the probe waits for the '
        'server\'s turn: what is measured is then the CPU time of a join, where a C server spends less)' % (
            PROBE_CPU, SERVER_CPU) if PINNED else ''))
    print(table(('vectors (rounds x clients)', 'upstream p50 / p99 (baseline)', 'ours p50 / p99', 'ours / upstream (p50, p99)'),
                latency_rows))
    realtime = all(row[-1] for row in bursts)
    print('A status request (a second process, one every 10 ms%s) on our server while a burst of clients joins at once, '
          'beside the same on the idle server before the burst and after it (a status lists every client, so it '
          'costs more with more of them). The server admits and sends in rounds of %.0f ms at most (then it serves '
          'whoever else waits), so a request should wait about one round longer than on the idle server:\n' % (
              ', at real-time priority: the probe, on the same core, cannot delay it' if realtime else
              ', not at real-time priority (not root): its figures include the probe\'s turns on the core',
              ROUND_SLICE * 1000))
    print(table(('status request', 'idle before (baseline)', 'while more join', 'idle after (baseline)', 'p99 during / after'),
                [('%d vectors, %d clients, %d more join (%d admitted)' % (vectors, resident, burst, admitted),
                  'p50 %s p99 %s' % (ms(statistics.median(before)), ms(percentile(before, 0.99))),
                  'p50 %s p99 %s' % (ms(statistics.median(busy)), ms(percentile(busy, 0.99))),
                  'p50 %s p99 %s' % (ms(statistics.median(after)), ms(percentile(after, 0.99))),
                  ratio(percentile(busy, 0.99), percentile(after, 0.99)))
                 for vectors, resident, burst, before, busy, after, admitted, _realtime in bursts]))
    print('Against the targets:')
    for vectors, wanted in ((2, 1000), (64, 100)):
        if vectors in results and args.clients >= wanted:
            ours, up = results[vectors]['ours']['admitted'][0], results[vectors]['upstream']['admitted'][-1]
            print(verdict('>= %d clients at %d vectors' % (wanted, vectors), ours >= wanted,
                          '%d admitted (%s), upstream %d' % (ours, results[vectors]['ours']['reason'], up)))
    for vectors in vector_counts:
        up, ours = results[vectors]['upstream']['groups'], results[vectors]['ours']['groups']
        shared_up, shared_ours = results[vectors]['upstream']['shared'], results[vectors]['ours']['shared']
        print(verdict('handshake latency no worse than upstream\'s at %d vectors (groups of %d%s)' % (
            vectors, up[3], ', the server on its own core' if PINNED else ''), ours[0] <= up[0] and ours[1] <= up[1],
            'p50 %s against %s, p99 %s against %s%s' % (
                ms(ours[0]), ms(up[0]), ms(ours[1]), ms(up[1]), '; on shared cores p50 %s against %s, p99 %s against %s' % (
                    ms(shared_ours[0]), ms(shared_up[0]), ms(shared_ours[1]), ms(shared_up[1])) if PINNED else '')))
    for vectors, resident, burst, _before, busy, after, _admitted, _realtime in bursts:
        busy99, after99 = percentile(busy, 0.99), percentile(after, 0.99)
        print(verdict('a burst of joins does not degrade the loop for others (%d vectors, %d joining a server of %d: status p99 '
                      'during <= %.0fx the idle server\'s)' % (vectors, burst, resident, BURST_TOLERANCE),
                      busy99 <= BURST_TOLERANCE * after99, 'p99 %s against %s' % (ms(busy99), ms(after99))))
    return 0


if __name__ == '__main__':
    sys.exit(main())
