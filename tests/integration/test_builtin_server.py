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

from conftest import REPO, Lab, lab_root

COLLECTIONS = os.path.join(REPO, '.cache', 'collections')


@pytest.fixture
def lab():
    lab = Lab(lab_root(), 'builtin')
    yield lab
    lab.teardown()


@pytest.fixture
def server():
    """A foreground server process started directly, as an operator would."""
    root = lab_root()
    sock = os.path.join(root, 's.sock')
    name = 'srv-%d' % os.getpid()
    env = dict(os.environ, PYTHONPATH=COLLECTIONS)
    argv = [sys.executable, '-c', 'import sys; from ansible_collections.ivshmem.fleet.plugins.module_utils.'
            '_ivshmem_server import main; sys.exit(main())', '-F', '-S', sock, '-M', name, '-l', '1M', '-n', '2',
            '--max-clients', '8']
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    wait_for('server', lambda: os.path.exists(sock + '.ctl'), 10)
    yield process, sock
    process.terminate()
    process.wait(10)
    assert not os.path.exists(sock) and not os.path.exists('/dev/shm/' + name)


def fd_count(pid):
    return len(os.listdir('/proc/%d/fd' % pid))


def test_misbehaving_clients_cost_only_their_own_connection(server):
    process, sock = server
    keeper, state = connect_client(sock, 2, 5)
    baseline = fd_count(process.pid)
    for _round in range(200):  # connect and vanish at once, mid-handshake
        flood = socket.socket(socket.AF_UNIX)
        flood.connect(sock)
        flood.close()
    talker = socket.socket(socket.AF_UNIX)
    talker.connect(sock)
    talker.sendall(b'garbage bytes on a one-way protocol')
    time.sleep(0.3)
    talker.close()
    status = control_request(sock + '.ctl', 'status')
    assert process.poll() is None
    assert [c['id'] for c in status['clients']] == [0]
    wait_for('fds to settle', lambda: fd_count(process.pid) == baseline, 5)
    newcomer, new_state = connect_client(sock, 2, 5)
    assert new_state.peer_id > 0  # a fresh ID: the flood's IDs are not handed out again at once
    newcomer.close()
    new_state.close()
    keeper.close()
    state.close()


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
    with pytest.raises(GuestError):
        lab.guest('early-peer', 's', timeout=15)
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


def test_memory_above_1_gib_with_owner_and_modes(lab):
    result = lab.server('big', size='2G', socket_mode='0660', memory_mode='0600')['server']
    memory = os.stat(result['memory'])
    sock = os.stat(result['socket'])
    assert memory.st_size == 2 << 30
    assert stat.S_IMODE(memory.st_mode) == 0o600 and stat.S_IMODE(sock.st_mode) == 0o660
    import pwd
    owner = pwd.getpwnam('ivshmem').pw_uid
    assert memory.st_uid == owner and sock.st_uid == owner
    assert lab.guest('m', 'big', role='master')['guest']['ivshmem'][0]['ivposition'] == 0
