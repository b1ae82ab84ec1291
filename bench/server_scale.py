"""How many clients an ivshmem server takes, and how fast: ours against QEMU's upstream server,
in the same run, with the same probe.

For each vector count, each server gets clients one at a time (each reads every message, as
QEMU does) until the target count, the first refusal, or the first client dropped. Printed per
server: clients admitted, handshake latency p50/p99 (connect to the last own vector), and the
server's RSS and open fds at the end. Then, for our server only (upstream has no status), the
p99 of an unrelated status request while a burst of clients joins, beside the same figure on
the idle server.

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

UPSTREAM = os.environ.get('IVSHMEM_FLEET_UPSTREAM_SERVER', os.path.join(REPO, '.cache', 'upstream', 'bin', 'ivshmem-server'))
JOIN_TIMEOUT = 10.0
KINDS = ('upstream', 'ours')


def start_server(kind, directory, vectors):
    sock = os.path.join(directory, '%s-%d.sock' % (kind, vectors))
    name = 'bench-scale-%s-%d-%d' % (kind, vectors, os.getpid())
    common = ['-F', '-S', sock, '-M', name, '-l', '1M', '-n', str(vectors)]
    if kind == 'ours':
        argv = [sys.executable, '-c', 'import sys; from ansible_collections.ivshmem.fleet.plugins.module_utils.'
                '_ivshmem_server import main; sys.exit(main())'] + common
    else:
        argv = [UPSTREAM] + common
    process = subprocess.Popen(argv, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
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


def small_groups(kind, directory, vectors, count, rounds):
    """Handshake latencies of groups of ``count`` clients, joined ``rounds`` times on one server."""
    process, sock = start_server(kind, directory, vectors)
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
    return pooled


def ping(control, seconds):
    """Child process: status requests back to back (10 ms apart); prints their latencies."""
    latencies, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            control_request(control, 'status', timeout=5.0)
            latencies.append(time.monotonic() - start)
        except ControlError:
            latencies.append(5.0)
        time.sleep(0.01)
    print(json.dumps(latencies))


def status_during_burst(directory, vectors, resident, burst, seconds):
    """p50/p99 of status requests on an idle server with ``resident`` clients, then while ``burst`` join."""
    process, sock = start_server('ours', directory, vectors)
    probe = Probe(sock, vectors)
    pinger = [sys.executable, os.path.abspath(__file__), '--ping', sock + '.ctl', str(seconds)]
    try:
        for _index in range(resident):
            client = probe.connect()
            probe.until(lambda client=client: probe.settled(client), JOIN_TIMEOUT)
        idle = subprocess.run(pinger, capture_output=True, check=True, env=os.environ)
        child = subprocess.Popen(pinger, stdout=subprocess.PIPE, env=os.environ)
        time.sleep(0.2)
        joined = [probe.connect() for _index in range(burst)]
        probe.until(lambda: all(probe.settled(c) for c in joined) and child.poll() is not None, seconds + 30)
        busy = json.loads(child.communicate()[0])
        admitted = len([c for c in joined if c.joined is not None])
    finally:
        probe.close()
        process.terminate()
        process.wait(10)
    return json.loads(idle.stdout), busy, admitted


def ms(value):
    return '%.1f ms' % (value * 1000)


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
    print('machine: %d cores; fd limit %d (both servers start with it; ours raises its soft limit to the '
          'hard one); %s; up to %d clients, one at a time, each reading every message; medians of %d runs' % (
              os.cpu_count(), hard, time.strftime('%Y-%m-%d'), args.clients, args.runs))
    print()
    print('| vectors | server | clients admitted | stopped because | handshake p50 | p99 | '
          'p50 / p99 in groups of upstream\'s size (rounds x clients) | RSS | fds |')
    print('|---:|---|---:|---|---:|---:|---:|---:|---:|')
    try:
        for vectors in [int(v) for v in args.vectors.split(',')]:
            rows = dict((kind, []) for kind in KINDS)
            for _run in range(args.runs):
                for kind in KINDS:
                    rows[kind].append(fill(kind, directory, vectors, args.clients))
            # Latency where both servers work: groups as large as upstream took, many times over
            # (a few handshakes per run would be noise).
            count = min(run[0] for run in rows['upstream'])
            rounds = max(10, 300 // max(count, 1))
            small = dict((kind, small_groups(kind, directory, vectors, count, rounds)) for kind in KINDS)
            for kind in KINDS:
                runs = rows[kind]
                admitted = sorted(run[0] for run in runs)
                print('| %d | %s | %s | %s | %s | %s | %s / %s (%d x %d) | %.1f MiB | %d |' % (
                    vectors, kind, '%d' % admitted[0] if admitted[0] == admitted[-1] else '%d to %d' % (
                        admitted[0], admitted[-1]), runs[-1][2],
                    ms(statistics.median(percentile(run[1], 0.5) for run in runs)),
                    ms(statistics.median(percentile(run[1], 0.99) for run in runs)),
                    ms(percentile(small[kind], 0.5)), ms(percentile(small[kind], 0.99)), rounds, count,
                    statistics.median(run[3] for run in runs), statistics.median(run[4] for run in runs)))
            sys.stdout.flush()
        print()
        for vectors, resident, burst in ((2, 200, 200), (64, 50, 50)):
            idle, busy, admitted = status_during_burst(directory, vectors, resident, burst, 3.0)
            print('status request, %d vectors, %d clients connected: idle p50 %s p99 %s (%d requests); '
                  'while %d more join (%d admitted): p50 %s p99 %s (%d requests); p99 ratio %.2f' % (
                      vectors, resident, ms(statistics.median(idle)), ms(percentile(idle, 0.99)), len(idle),
                      burst, admitted, ms(statistics.median(busy)), ms(percentile(busy, 0.99)), len(busy),
                      percentile(busy, 0.99) / percentile(idle, 0.99)))
            sys.stdout.flush()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
