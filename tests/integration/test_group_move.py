"""The group move engine's failure matrix on real QEMU: two "hosts" (runtime directories, each
with its own server of the group) on this machine. After every case the group runs whole on
exactly one host, master ID 0 and peers 1..n, its memory as it was, and no move left open.

Each case of the matrix fails without what it relies on (IVSHMEM_FLEET_TEST_DISABLE, move_lab.py):
``journal`` (after a failure the engine guesses "roll back") fails the controller-killed, the
unreachable and the lost-after-verifying cases; ``journal-hold`` (it guesses "touch nothing")
fails those and the altered-memory and killed-destination cases; ``lock`` fails the two runs. The
rerun after success relies on neither: it fails when the engine does not see the group already
moved."""
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._move_engine import (
    HostUnreachable, LockHeld, MoveFailed)
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPClient
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import wait_for

from conftest import lab_root
from move_lab import TwoHosts

HERE = os.path.dirname(os.path.abspath(__file__))
SLOW = 2 << 20  # bytes/s: a 4 MiB region then takes about 2 s, long enough to strike mid-send


def deployed_with_a_pattern(**options):
    """The group deployed on host a, its memory filled at random, that content's sha1 kept."""
    hosts = TwoHosts(lab_root(), uuid.uuid4().hex[:6], **options)
    hosts.deploy('a')
    with open(hosts.memory('a'), 'r+b') as handle:
        handle.write(os.urandom(4 << 20))
    hosts.digest = sha1_of(hosts.memory('a'))
    return hosts


@pytest.fixture
def hosts():
    hosts = deployed_with_a_pattern()
    yield hosts
    hosts.teardown()


def sha1_of(path):
    with open(path, 'rb') as handle:
        return hashlib.sha1(handle.read()).hexdigest()


def assert_whole_on(hosts, host):
    other = 'b' if host == 'a' else 'a'
    here = hosts.where(host)
    assert [here[n] for n in ('g-master', 'g-peer1', 'g-peer2')] == ['running'] * 3, here
    assert [here['g-master:id'], here['g-peer1:id'], here['g-peer2:id']] == [0, 1, 2], here
    assert here['g-master:ivposition'] == 0, here
    assert sha1_of(hosts.memory(host)) == hosts.digest
    assert set(hosts.where(other).values()) == {'absent'}, hosts.where(other)
    assert hosts.memory(other) is None
    for name in ('a', 'b'):
        assert (hosts.journal(name) or {}).get('step') in (None, 'done'), hosts.journal(name)


class Faulty:
    """A host handle that fails or acts before chosen steps. ``answer_lost`` runs the step on the
    host but loses its answer, and the host stays out of reach after that."""

    def __init__(self, handle, unreachable_from=None, before=None, answer_lost=None):
        self.handle, self.unreachable_from, self.before = handle, unreachable_from, before or {}
        self.answer_lost = answer_lost
        self.down = False

    def call(self, params):
        if params['step'] == self.unreachable_from:
            self.down = True
        if self.down:
            raise HostUnreachable('no route to host (test)')
        if params['step'] in self.before:
            self.before.pop(params['step'])()
        result = self.handle.call(params)
        if params['step'] == self.answer_lost:
            self.down = True
            raise HostUnreachable('connection lost (test)')
        return result


def engine_with(hosts, source, destination, wrap=None, **options):
    move = hosts.engine(source, destination, **options)
    for name, wrapper in (wrap or {}).items():
        move.hosts[name] = wrapper(move.hosts[name])
    return move


def test_a_move_is_verified_reports_the_real_outage_and_a_rerun_changes_nothing(hosts):
    report = hosts.engine('a', 'b').run()
    assert report['changed'] and report['outcome'] == 'moved'
    assert_whole_on(hosts, 'b')
    checks = report['verification']
    assert checks['source_checksums'] == checks['destination_checksums']
    assert checks['source_checksums'][0].startswith('chunked-crc32-32MiB:')
    # The real outage includes QEMU's downtime and everything after it until the guest runs.
    # (QEMU's figures read 0 when asked before it computed them: they must not.)
    assert report['master_outage_ms'] >= report['downtime_ms'] > 0 and report['total_time_ms'] > 0
    assert report['peer_outage_ms'] >= report['master_outage_ms']
    # The restarted peers ran some time after the master did, within their own outage.
    assert 0 < report['peers_start_ms'] < report['peer_outage_ms']
    again = hosts.engine('a', 'b').run()
    assert not again['changed'] and again['outcome'] == 'already moved'
    assert_whole_on(hosts, 'b')


def test_source_equal_to_destination_is_refused_before_anything(hosts):
    with pytest.raises(ValidationError) as info:
        hosts.engine('a', 'a')
    assert info.value.field == 'destination'
    assert hosts.journal('a') is None


def test_settings_that_corrupt_shared_memory_are_refused(hosts):
    with QMPClient(os.path.join(hosts.layouts['a'].guest_qmp('g-master'))) as qmp:
        qmp.command('migrate-set-capabilities', {'capabilities': [{'capability': 'x-ignore-shared', 'state': True}]})
    with pytest.raises(MoveFailed) as info:
        hosts.engine('a', 'b').run()
    assert 'x-ignore-shared' in str(info.value) and 'shared memory would not reach' in str(info.value)
    assert_whole_on(hosts, 'a')


def test_a_destination_with_altered_memory_is_discarded_and_the_group_resumes(hosts):
    def alter():
        def loaded():
            with QMPClient(hosts.layouts['b'].guest_qmp('g-master')) as qmp:
                return qmp.command('query-status')['status'] != 'inmigrate'
        wait_for('the destination to load', loaded, 30, retry_on=(Exception,))
        with open(hosts.memory('b'), 'r+b') as handle:
            handle.write(b'\xff' * 4096)

    move = engine_with(hosts, 'a', 'b', wrap={'b': lambda h: Faulty(h, before={'verify': alter})})
    with pytest.raises(MoveFailed) as info:
        move.run()
    assert 'differs' in str(info.value) and 'runs on a again' in str(info.value)
    assert_whole_on(hosts, 'a')
    hosts.engine('a', 'b').run()
    assert_whole_on(hosts, 'b')


def test_destination_qemu_killed_mid_migration_rolls_back_then_the_same_command_moves(hosts):
    def kill_soon():
        def strike():
            time.sleep(0.8)
            subprocess.run(['pkill', '-KILL', '-f', hosts.layouts['b'].guest_qmp('g-master')], check=False)
        threading.Thread(target=strike, daemon=True).start()

    move = engine_with(hosts, 'a', 'b', max_bandwidth=SLOW, wrap={'b': lambda h: Faulty(h, before={'verify': kill_soon})})
    with pytest.raises(MoveFailed) as info:
        move.run()
    assert 'runs on a again' in str(info.value)
    assert_whole_on(hosts, 'a')
    hosts.engine('a', 'b').run()
    assert_whole_on(hosts, 'b')


def test_a_stray_peer_on_the_destination_server_never_gets_into_the_group(hosts):
    """A peer already attached to the destination's server of the group (two servers on one
    machine): the move starts a fresh server held for the master, so the stray is stranded, the
    master gets ID 0 and the peers theirs. (The server admits only the group's accounts, so the
    stray runs under one of them: a copy of g-peer2 started there by hand too early, say; the
    guest module itself would refuse to start a second guest under g-peer2's account.)"""
    import grp
    import pwd
    from ansible_collections.ivshmem.fleet.plugins.module_utils._model import SERVICE_GROUP, guest_account
    from ansible_collections.ivshmem.fleet.plugins.module_utils._server import ServerManager, server_status

    layout = hosts.layouts['b']
    ServerManager(dict(hosts.group['server'], timeout=20, **hosts.overrides('b')), layout, False).run('started')
    argv = ['/usr/bin/qemu-system-x86_64', '-name', 'g-stray', '-machine', 'pc', '-accel', 'tcg', '-m', '64',
            '-nodefaults', '-display', 'none', '-chardev', 'socket,path=%s,id=c' % layout.server_socket('g'),
            '-device', 'ivshmem-doorbell,chardev=c,vectors=2']
    stray = subprocess.Popen(argv, user=pwd.getpwnam(guest_account('g-peer2')).pw_uid,
                             group=grp.getgrnam(SERVICE_GROUP).gr_gid, extra_groups=[],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for('the stray attached', lambda: stray.pid in [c['pid'] for c in server_status(layout, 'g')['clients']], 60)
        hosts.engine('a', 'b').run()
        assert_whole_on(hosts, 'b')
        clients = dict((c['name'], c['id']) for c in server_status(layout, 'g')['clients'])
        assert clients == {'g-master': 0, 'g-peer1': 1, 'g-peer2': 2}, clients
    finally:
        stray.kill()
        stray.wait()


@pytest.mark.parametrize('step', ['prepare_destination', 'commit'])
def test_destination_unreachable_then_reachable_again(hosts, step):
    """Unreachable from the start of a step: the group resumes on the source when the destination
    was never asked to run; once the source journal says committing, it stays paused until the
    destination answers, and the same command then resolves it. (commit is a step of the path
    where the controller relays the checksums.)"""
    move = engine_with(hosts, 'a', 'b', relay_checksums=True, wrap={'b': lambda h: Faulty(h, unreachable_from=step)})
    with pytest.raises(MoveFailed) as info:
        move.run()
    if step == 'commit':
        assert 'keeps it paused' in str(info.value)
        assert hosts.journal('a')['step'] == 'committing'
        assert hosts.where('a')['g-master'] == 'migrated'
        report = hosts.engine('a', 'b').run()
        assert 'rolled back' in report['resolved']
        # Resolved to the source (the destination was never verified); moved on this same run.
        assert report['outcome'] == 'moved'
    else:
        assert hosts.journal('b')['step'] == 'claimed'  # a stale claim the next run takes over
        assert set(hosts.where('a').values()) - {0, 1, 2} == {'running'}
        report = hosts.engine('a', 'b').run()
        assert report['resolved'] and report['outcome'] == 'moved'
    assert_whole_on(hosts, 'b')


def test_destination_lost_after_it_verified_over_the_channel(hosts):
    """The destination verified and continued (it told the source over the channel), then the
    controller lost it: the source is cleaned, never resumed; the same command confirms."""
    move = engine_with(hosts, 'a', 'b', wrap={'b': lambda h: Faulty(h, answer_lost='verify')})
    with pytest.raises(MoveFailed) as info:
        move.run()
    assert 'verified and runs group g' in str(info.value)
    assert set(hosts.where('a').values()) == {'absent'}
    report = hosts.engine('a', 'b').run()
    assert 'finished the move' in report['resolved']
    assert_whole_on(hosts, 'b')


def run_killed_at(hosts, step=None, delay=0.0, options=None, when=None):
    """Run a move in a separate process (the controller) and SIGKILL it ``delay`` s after it
    starts ``step``, or as soon as ``when()`` holds (polled)."""
    state = os.path.join(hosts.root, 'state.json')
    with open(state, 'w') as handle:
        json.dump(hosts.state(), handle)
    process = subprocess.Popen([sys.executable, os.path.join(HERE, 'move_lab.py'), state, 'a', 'b',
                                json.dumps(options or {})], stdout=subprocess.PIPE, text=True)
    seen = []
    if when is not None:
        wait_for('the kill condition', when, 120, interval=0.005, max_interval=0.005, retry_on=(Exception,))
        process.send_signal(signal.SIGKILL)
    else:
        for line in process.stdout:
            seen.append(line.strip())
            if line.strip() == 'STEP %s' % step:
                time.sleep(delay)
                process.send_signal(signal.SIGKILL)
                break
    process.wait(30)
    assert process.returncode == -signal.SIGKILL, seen
    return seen


def journal_step(hosts, host, step):
    return lambda: (hosts.journal(host) or {}).get('step') == step


@pytest.mark.parametrize('case', [
    'send starts',                    # killed as the send starts
    'mid-migration',                  # the source waits at the switchover gate, nobody follows
    'relayed: verified, before cont',  # the controller relays checksums: killed before commit
    'relayed: during commit',         # ... while the destination continues and starts its peers
    'channel: during peer start',     # the destination continued on the channel's verdict
    'before the source is cleaned',
])
def test_controller_killed_then_the_same_command_resolves(hosts, case):
    slow = {'max_bandwidth': SLOW}
    relayed = dict(slow, relay_checksums=True)
    kill = {
        'send starts': dict(step='send:a', options=slow),
        'mid-migration': dict(step='verify:b', delay=1.0, options=slow),
        'relayed: verified, before cont': dict(step='mark:a', options=relayed),
        # Struck when the destination journals verified, while it continues and starts its peers
        # (a fixed delay after the commit call began was a race: the whole move could finish first).
        'relayed: during commit': dict(when=journal_step(hosts, 'b', 'verified'), options=relayed),
        'channel: during peer start': dict(when=journal_step(hosts, 'b', 'verified'), options=slow),
        'before the source is cleaned': dict(step='finish_source:a', options=slow),
    }[case]
    run_killed_at(hosts, **kill)
    states = list(hosts.where('a').values()) + list(hosts.where('b').values())
    assert set(states) & {'paused', 'migrated', 'incoming'}, states  # really left in between
    report = hosts.engine('a', 'b').run()
    assert report.get('resolved'), report
    assert_whole_on(hosts, 'b')


def slow_move_sending(hosts):
    """A slow move a -> b in a process of its own (another run of this controller), once it sends."""
    state = os.path.join(hosts.root, 'state.json')
    with open(state, 'w') as handle:
        json.dump(hosts.state(), handle)
    process = subprocess.Popen([sys.executable, os.path.join(HERE, 'move_lab.py'), state, 'a', 'b',
                                json.dumps({'max_bandwidth': SLOW})], stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith('STEP send'):
            break
    return process


def test_two_runs_at_once_the_second_fails_at_once_naming_the_holder(hosts):
    first = slow_move_sending(hosts)
    with pytest.raises(LockHeld) as info:
        hosts.engine('a', 'b').run()
    assert first.poll() is None  # refused at once, not after waiting for the first run
    assert 'pid %d' % first.pid in str(info.value)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 0, output
    assert '"outcome": "moved"' in output
    assert_whole_on(hosts, 'b')


def test_a_destination_whose_migration_ports_are_taken_is_refused_before_anything_changes(hosts):
    """A local user holding the migration port + 1 on the destination made every move to it fail
    half-way (the verification channel could not listen); now the move is refused first."""
    import socket
    squatter = socket.socket()
    squatter.bind(('127.0.0.1', hosts.port + 1))
    squatter.listen(1)
    try:
        with pytest.raises(MoveFailed) as info:
            hosts.engine('a', 'b').run()
    finally:
        squatter.close()
    assert 'port %d taken by another process' % (hosts.port + 1) in str(info.value), info.value
    assert 'nothing was changed' in str(info.value)
    assert_whole_on(hosts, 'a')


def test_a_rerun_waits_for_the_orphaned_run_of_its_controller_then_resolves(hosts):
    """kill -9 of ansible-playbook leaves its worker (setsid) running the engine: the operator's
    rerun right after was refused ('being moved by run ...'). With lock_wait, as group_migrate
    runs, it waits for that run, showing progress, and then finds the group moved."""
    orphan = slow_move_sending(hosts)
    shown = []
    report = hosts.engine('a', 'b', lock_wait=120, progress=shown.append).run()
    assert orphan.wait(60) == 0
    assert report['outcome'] == 'already moved' and report['lock_waited_s'] > 0, report
    assert shown and shown[0]['waiting_for'] and shown[0]['pid'] == orphan.pid, shown[:2]
    assert_whole_on(hosts, 'b')


def test_a_destination_server_restarted_under_the_waiting_master_fails_the_attempt_then_moves(hosts):
    """The Molecule faults case on one machine: the destination's server restarts while its master
    waits for the stream. The master keeps IVPOSITION 0 and, since a server stopped under guests
    keeps their memory, the same memory: only the server can tell that it no longer serves the
    master. That attempt is rolled back and the next one moves the group whole."""
    from ansible_collections.ivshmem.fleet.plugins.module_utils._server import ServerManager

    def restart_destination_server(step):
        if step == 'send:a' and not restarted:
            restarted.append(step)
            ServerManager(dict(hosts.group['server'], timeout=20, **hosts.overrides('b')), hosts.layouts['b'],
                          False).run('restarted')
    restarted = []
    report = hosts.engine('a', 'b', attempts=2, observer=restart_destination_server).run()
    assert restarted and report['outcome'] == 'moved' and report['attempt'] == 2, report
    assert 'does not serve the master as ID 0' in report['failures'][0], report['failures']
    assert_whole_on(hosts, 'b')


def streaming(port):
    """Whether a TCP connection to or from ``port`` on this machine is established."""
    listing = subprocess.run(['ss', '-Htn', 'state', 'established', '( sport = :%d or dport = :%d )' % (port, port)],
                             capture_output=True, text=True, check=True).stdout
    return bool(listing.strip())


@contextlib.contextmanager
def link_cut(ports):
    """Packets of ``ports`` dropped on this machine (as a pulled cable drops them: no reset, the
    peers wait) until the block ends. Needs nftables (scripts/bootstrap.sh installs it)."""
    table = 'ivshmem_fleet_cut_%d' % os.getpid()
    rules = ['add table inet %s' % table,
             'add chain inet %s input { type filter hook input priority 0; }' % table]
    for port in ports:
        rules += ['add rule inet %s input tcp dport %d drop' % (table, port),
                  'add rule inet %s input tcp sport %d drop' % (table, port)]
    subprocess.run(['nft', '-f', '-'], input='\n'.join(rules) + '\n', text=True, check=True)
    try:
        yield
    finally:
        subprocess.run(['nft', 'delete', 'table', 'inet', table], check=True)


def test_the_migration_link_cut_mid_stream_fails_the_attempt_and_the_next_moves_the_group(hosts):
    """The Molecule faults case link-cut on one machine: the migration stream (and the
    verification channel beside it) loses every packet mid-send, and the link comes back only once
    the engine has given that attempt up. The cut attempt ends at its timeout and is rolled back,
    and the next one, over the same link, moves the group whole."""
    attempts, given_up = [], []

    def observe(step):
        if step.startswith('prepare_destination'):
            attempts.append(step)
        if step.startswith('rollback'):
            given_up.append(step)

    def cut_once():
        wait_for('the migration stream', lambda: streaming(hosts.port), 60, interval=0.05)
        with link_cut([hosts.port, hosts.port + 1]):
            # Back once the engine has given the attempt up (its first rollback call). A cut that
            # lands while the source writes its last pass holds QEMU's main loop, and so its
            # monitor, until the link answers: the rollback needs the link back, as a cable
            # plugged in again gives it (the send step, whose monitor calls time out, fails first).
            wait_for('the cut attempt given up', lambda: given_up or len(attempts) >= 2, 180, interval=0.2)
    cutter = threading.Thread(target=cut_once, daemon=True)
    cutter.start()
    try:
        report = hosts.engine('a', 'b', max_bandwidth=SLOW, timeout=10, attempts=3, backoff=1, observer=observe).run()
    except MoveFailed as exc:
        # The cut landed in the last pass and the source's QEMU answered nothing until the link
        # did, longer than the rollback waits for it: the move stops with the group paused on a,
        # nothing lost, and says to run it again. The same command, with the link back, moves it.
        assert 'run the same command again' in str(exc), exc
        cutter.join(30)
        assert not cutter.is_alive()
        report = hosts.engine('a', 'b', max_bandwidth=SLOW, attempts=2).run()
        assert report['outcome'] == 'moved', report
        assert_whole_on(hosts, 'b')
        return
    cutter.join(30)
    assert not cutter.is_alive()
    assert report['outcome'] == 'moved' and report['attempt'] == 2, report
    assert len(report['failures']) == 1, report['failures']  # the cut attempt's (how it ends varies with load)
    assert_whole_on(hosts, 'b')


def test_a_destination_server_restarted_mid_stream_fails_the_attempt_then_moves(hosts):
    """The Molecule faults case server-restarted-during on one machine: the destination's server
    restarts while the master's state streams in. That attempt is rolled back (the server no
    longer serves the master as ID 0) and the next one moves the group whole."""
    from ansible_collections.ivshmem.fleet.plugins.module_utils._server import ServerManager

    def restart_when_streaming():
        wait_for('the migration stream', lambda: streaming(hosts.port), 60, interval=0.05)
        ServerManager(dict(hosts.group['server'], timeout=20, **hosts.overrides('b')), hosts.layouts['b'],
                      False).run('restarted')
    restarter = threading.Thread(target=restart_when_streaming, daemon=True)
    restarter.start()
    report = hosts.engine('a', 'b', max_bandwidth=SLOW, attempts=2).run()
    restarter.join(30)
    assert report['outcome'] == 'moved' and report['attempt'] == 2, report
    assert_whole_on(hosts, 'b')
