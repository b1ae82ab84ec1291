"""Our server as a process: policy and robustness, with real QEMU where a guest is involved."""
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import control_request
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import GuestError
from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_protocol import connect_client
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import wait_for
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import server_account

from accounts import connect_as
from ivshmem_probe import Probe


@pytest.fixture
def lab(builtin_lab):
    return builtin_lab


@pytest.fixture
def server(start_server):
    process, sock, _log = start_server('-n', '2', '--max-clients', '8')
    return process, sock


def fd_count(pid):
    return len(os.listdir('/proc/%d/fd' % pid))


def test_misbehaving_clients_cost_only_their_own_connection(server):
    process, sock = server
    probe = Probe(sock, 2)  # the keeper reads every announcement, as QEMU does
    try:
        keeper = probe.connect()
        assert probe.until(lambda: probe.settled(keeper), 5) and keeper.peer_id == 0
        probe.until(lambda: False, 0.3)  # the server, idle, makes the next newcomer's eventfds ahead
        baseline = fd_count(process.pid)
        for _round in range(200):  # connect and vanish at once, mid-handshake
            flood = socket.socket(socket.AF_UNIX)
            flood.connect(sock)
            flood.close()
        talker = socket.socket(socket.AF_UNIX)
        talker.connect(sock)
        talker.sendall(b'garbage bytes on a one-way protocol')
        probe.until(lambda: False, 0.3)
        talker.close()
        status = control_request(sock + '.ctl', 'status')
        assert process.poll() is None
        assert [c['id'] for c in status['clients']] == [0]
        assert probe.until(lambda: fd_count(process.pid) == baseline, 5), 'fds did not settle'
        newcomer = probe.connect()
        assert probe.until(lambda: probe.settled(newcomer), 5)
        assert newcomer.peer_id > 0  # a fresh ID: the flood's IDs are not handed out again at once
        assert probe.until(lambda: probe.knows_everyone(keeper), 5) and keeper.closed is None
    finally:
        probe.close()


def test_client_cap_refuses_the_ninth(server):
    _process, sock = server
    clients = [connect_client(sock, 2, 5) for _client in range(8)]
    refused = socket.socket(socket.AF_UNIX)
    refused.settimeout(5)
    refused.connect(sock)
    assert refused.recv(8) == b''  # closed without a handshake
    assert control_request(sock + '.ctl', 'status')['refused'] >= 1
    for s, st in clients:
        s.close()
        st.close()


def test_stale_socket_is_recovered_and_a_live_one_is_not_taken(lab):
    first = lab.server('s')['server']
    with pytest.raises(Exception) as info:  # a second server on the same socket refuses to start
        subprocess.run([sys.executable, os.path.join(lab.root, 'program', 'ivshmem-fleet-server.pyz'), '-F',
                        '-S', first['socket'], '-M', 'other-%s' % lab.tag], check=True, capture_output=True, timeout=10)
    assert 'another server' in info.value.stderr.decode()
    os.kill(first['pid'], signal.SIGKILL)
    wait_for('kill', lambda: not os.path.exists('/proc/%d/cmdline' % first['pid']) or
             open('/proc/%d/stat' % first['pid']).read().split(') ')[1][0] == 'Z', 5)
    assert os.path.exists(first['socket'])  # left behind by SIGKILL
    second = lab.server('s')['server']
    assert second['pid'] != first['pid'] and second['state'] == 'started'


def test_hold_admits_only_the_master_then_release_admits_peers(lab):
    lab.server('s', admission='held', hold_for='m')
    started = time.monotonic()
    with pytest.raises(GuestError) as refused:  # refused QEMU spins, its monitor silent: no use waiting for it
        lab.guest('early-peer', 's', timeout=30)
    assert 'the ivshmem server s refused it: admission held for master m' in str(refused.value)
    assert time.monotonic() - started < 10
    assert lab.guest('m', 's', role='master')['guest']['ivshmem'][0]['ivposition'] == 0
    lab.server('s', admission='open')
    assert lab.guest('p', 's')['guest']['ivshmem'][0]['ivposition'] == 1


def test_pinned_ids_whatever_the_connection_order(lab):
    lab.server('s', pins={'m': 0, 'p1': 1, 'p2': 2})
    lab.guest('m', 's', role='master')
    p2 = lab.guest('p2', 's')
    p1 = lab.guest('p1', 's')
    assert (p1['guest']['ivshmem'][0]['ivposition'], p2['guest']['ivshmem'][0]['ivposition']) == (1, 2)
    clients = control_request(lab.layout.server_control('s'), 'status')['clients']
    assert [(c['id'], c['name']) for c in clients] == [(0, 'm'), (1, 'p1'), (2, 'p2')]


def test_a_pinned_peer_that_comes_back_is_never_announced_again(builtin_lab):
    """QEMU's ivshmem frees a peer's vector table when told the peer left and writes into the
    freed table when the same ID joins again (hw/misc/ivshmem.c, 7.2): a master whose pinned peer
    had its device unplugged and plugged back aborted with heap corruption. So a pinned peer's
    departure is not announced, and it comes back with the same eventfds, unannounced."""
    lab = builtin_lab
    lab.server('s', pins={'m': 0, 'p': 1})
    lab.guest('m', 's', role='master')
    lab.guest('p', 's')
    probe = Probe(lab.layout.server_socket('s'), 2)  # stands for every other guest of the server
    try:
        watcher = probe.connect()
        assert probe.until(lambda: probe.settled(watcher) and watcher.peers[1] == 2, 5)
        lab.guest('p', 's', state='stopped')
        lab.guest('p', 's')
        late = probe.connect()  # joined while p was away or after: told of p's vectors once
        assert probe.until(lambda: probe.settled(late), 5)
        probe.until(lambda: False, 0.5)
        assert watcher.departures == [] and watcher.peers[1] == 2, (watcher.departures, watcher.peers)
        assert late.peers[1] == 2 and late.departures == []
        assert lab.status('m')['state'] == 'running' and lab.status('p')['ivshmem'][0]['ivposition'] == 1
    finally:
        probe.close()


def test_a_pinned_guest_that_left_before_anyone_heard_of_it_is_announced_when_it_comes_back(start_server):
    """A pinned guest whose connection is gone before its handshake went out was never announced:
    back with the same ID, the others must be told of it as of any newcomer, or they never learn
    its vectors (the server once kept it as a pinned guest away, back unannounced)."""
    process, sock, log = start_server('-v', '-n', '2', '--account', 'p=0', '--pin', 'p=1', '--socket-mode', '0666')
    probe = Probe(sock, 2)
    try:
        watcher = probe.adopt(connect_as('nobody', sock))  # stands for the other guests (root is p)
        assert probe.until(lambda: probe.settled(watcher), 5) and watcher.peer_id == 0
        os.kill(process.pid, signal.SIGSTOP)  # p connects and is gone before the server looks
        try:
            early = socket.socket(socket.AF_UNIX)
            early.connect(sock)
            early.close()
        finally:
            os.kill(process.pid, signal.SIGCONT)
        wait_for('the early connection freed', lambda: 'free peer 1 ' in open(log).read(), 5)
        guest = probe.connect()
        assert probe.until(lambda: probe.settled(guest) and probe.knows_everyone(watcher), 5), watcher.peers
        assert (guest.peer_id, guest.closed, watcher.peers[1], guest.peers[0]) == (1, None, 2, 2)
    finally:
        probe.close()


def test_memory_above_1_gib_with_owner_and_modes(lab):
    result = lab.server('big', size='2G', socket_mode='0660', memory_mode='0600')['server']
    memory = os.stat(result['memory'])
    sock = os.stat(result['socket'])
    assert memory.st_size == 2 << 30
    assert stat.S_IMODE(memory.st_mode) == 0o600 and stat.S_IMODE(sock.st_mode) == 0o660
    import pwd
    owner = pwd.getpwnam(server_account('big')).pw_uid  # the server's own account
    assert memory.st_uid == owner and sock.st_uid == owner
    assert lab.guest('m', 'big', role='master')['guest']['ivshmem'][0]['ivposition'] == 0


def control_connection(path):
    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(5)
    conn.connect(path)
    return conn


def test_bad_control_requests_get_errors_and_idle_connections_cannot_lock_out_status(start_server):
    process, sock, _log = start_server('-n', '1')
    control = sock + '.ctl'
    for bad in (b'[' * 100000 + b'\n', b'{"command": "status"' + b' ' * 5000, b'\xff\xfe\n', b'"status"\n',
                b'{"command": "hold", "master": ["m"]}\n', b'{"command": "reboot"}\n'):
        conn = control_connection(control)
        conn.sendall(bad)
        reply = b''
        while not reply.endswith(b'\n'):
            chunk = conn.recv(65536)
            assert chunk, 'no reply to %r' % bad[:40]
            reply += chunk
        conn.close()
        assert reply.startswith(b'{"error": ')
    idle = [control_connection(control) for _conn in range(100)]  # more than the 64 served at once
    start = time.monotonic()
    assert control_request(control, 'status', timeout=5)['pid'] == process.pid
    assert time.monotonic() - start < 1.0  # the oldest idle connection made room
    start = time.monotonic()
    assert idle[-1].recv(1) == b''  # and an idle one is closed after the idle timeout
    assert time.monotonic() - start < 4.0
    for conn in idle:
        conn.close()


def test_a_request_on_a_connection_closed_to_make_room_is_ignored(start_server):
    """In one round of events, a new control connection can close the oldest (the cap of 64)
    whose request is in the same round: the server skips it (it once died of a KeyError)."""
    process, sock, _log = start_server('-n', '1')
    control = sock + '.ctl'
    idle = [control_connection(control) for _conn in range(64)]
    time.sleep(0.3)  # all accepted, none idle long enough to be closed (2 s)
    os.kill(process.pid, signal.SIGSTOP)
    try:
        newest = control_connection(control)  # ready first: accepted first, closing the oldest
        idle[0].sendall(b'{"command": "status"}\n')
    finally:
        os.kill(process.pid, signal.SIGCONT)
    try:
        idle[0].recv(1)  # closed unanswered (or, had its request come first, answered)
    except ConnectionResetError:
        pass
    assert process.poll() is None and control_request(control, 'status', timeout=5)['pid'] == process.pid
    for conn in idle + [newest]:
        conn.close()


def cpu_seconds(pid):
    fields = open('/proc/%d/stat' % pid).read().rsplit(') ', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def test_at_the_fd_limit_the_server_backs_off_instead_of_spinning(start_server):
    process, sock, log = start_server('-n', '1', fd_limit=40)
    waiting = [control_connection(sock + '.ctl') for _conn in range(60)]  # more than 40 fds can hold
    before = cpu_seconds(process.pid)
    time.sleep(1.0)
    assert cpu_seconds(process.pid) - before < 0.3
    with open(log) as lines:
        assert 0 < sum('accept failed' in line for line in lines) <= 10
    for conn in waiting:
        conn.close()
    assert control_request(sock + '.ctl', 'status', timeout=5)['fd_limit'] == 40
