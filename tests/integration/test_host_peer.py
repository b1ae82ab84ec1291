"""A host-side peer (ivshmem-fleet-peer, installed beside the builtin server) rings a Linux guest
and hears it, joined under its own account with the ID its group pins for it.

The master guest runs tests/guest/ivshmem-workload.c: it rings the peer ID its kernel command line
names (ivw.ring) ten times a second and reports the doorbells it receives (bells=N) on its console.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host
from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import normalize_group
from ansible_collections.ivshmem.fleet.plugins.module_utils._layout import Layout
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import SERVICE_GROUP
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import peer_program
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import wait_for

BELLS = re.compile(r'IVW master seq=\d+ ok bells=(\d+)')
STRANGER = 'ivh-stranger-test'


def peer(lab, user, *command, timeout=90):
    """Run the installed peer program as ``user``: (exit status, what it printed)."""
    program = Layout.peer_program(os.path.join(lab.root, 'program'))
    done = subprocess.run(['runuser', '-u', user, '--', '/usr/bin/python3', program,
                           '-S', lab.layout.server_socket('g'), '-n', '2'] + list(command),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    return done.returncode, done.stdout.decode()


def bells(lab):
    with open(os.path.join(lab.layout.guest_dir('g-m'), 'console.log'), 'rb') as handle:
        counts = BELLS.findall(handle.read().decode('utf-8', 'replace'))
    return int(counts[-1]) if counts else None


@pytest.fixture
def stranger():
    """An account in the service group that no server knows."""
    _host.ensure_account(STRANGER, SERVICE_GROUP, False)
    yield STRANGER
    subprocess.run(['userdel', STRANGER], check=False)


def test_a_host_peer_joins_with_its_pinned_id_rings_the_master_and_hears_it(builtin_lab, test_guest, stranger):
    lab = builtin_lab
    group = normalize_group(0, {
        'name': 'g', 'host': 'a', 'size': '4M', 'vectors': 2,
        'master': {'name': 'g-m', 'memory': '256M', 'accel': 'tcg', 'kernel': os.path.join(test_guest, 'vmlinuz'),
                   'initrd': os.path.join(test_guest, 'initrd.img'),
                   'append': 'console=ttyS0 quiet ivw.mode=master ivw.ring=1'},
        'host_peers': [{'name': 'bell'}],
    }, ['a'], lab.layout)
    assert group['host_peers'] == [{'name': 'bell', 'user': 'ivh-bell', 'id': 1}]
    server = dict(group['server'])
    server.pop('name')
    lab.server('g', **server)
    master = dict(group['master'], timeout=60)
    lab.guest('g-m', 'g', role='master', **dict((k, v) for k, v in master.items() if k not in ('name', 'ivshmem')))
    wait_for('the master to report', lambda: bells(lab) is not None, 120, interval=0.5)

    status, said = peer(lab, 'ivh-bell', 'info')
    assert status == 0, said
    assert json.loads(said) == {'id': 1, 'peers': {'0': 2, '1': 2}}  # pinned, after the master

    status, said = peer(lab, 'ivh-bell', 'wait', '--count', '3', '--for', '60')
    assert status == 0, said
    assert said.count('doorbell vector 0') >= 1, said

    before = bells(lab)
    status, said = peer(lab, 'ivh-bell', 'ring', '--to', '0', '--count', '30', '--interval', '0.1')
    assert status == 0 and said.count('rang peer 0 vector 0') == 30, said
    wait_for('the master to count the rings', lambda: bells(lab) > before, 30, interval=0.5)

    status, said = peer(lab, 'ivh-bell', 'ring', '--to', '7')
    assert status == 2 and 'peer 7 is not connected' in said, said
    # Known by its account, as guests are: one the server does not know is not admitted.
    status, said = peer(lab, stranger, 'info')
    assert status == 2 and 'not joined' in said, said


def test_two_host_peers_ring_each_other_through_our_server(start_server, tmp_path):
    """Without a guest: the program as installed (the zipapp), against our server as it runs."""
    _process, sock, _log = start_server('-n', '2')
    program = tmp_path / 'ivshmem-fleet-peer.pyz'
    program.write_bytes(peer_program())

    def run(*command):
        return [sys.executable, str(program), '-S', sock, '-n', '2'] + list(command)
    waiting = subprocess.Popen(run('wait', '--vector', '1', '--count', '3', '--for', '30'), stdout=subprocess.PIPE)

    def others():
        seen = json.loads(subprocess.run(run('info'), stdout=subprocess.PIPE, check=True).stdout)
        return [int(peer) for peer, vectors in seen['peers'].items() if int(peer) != seen['id'] and vectors == 2]
    waiter = wait_for('the waiting peer to join', others, 10, interval=0.1)[0][0]
    rang = subprocess.run(run('ring', '--to', str(waiter), '--vector', '1', '--count', '3', '--interval', '0.05'),
                          stdout=subprocess.PIPE, check=False)
    assert rang.returncode == 0, rang.stdout
    said = waiting.communicate(timeout=30)[0].decode()
    assert waiting.returncode == 0 and 'doorbell vector 1 (3)' in said, said
    timed_out = subprocess.run(run('wait', '--for', '1'), stdout=subprocess.PIPE, check=False)
    assert timed_out.returncode == 1 and b'heard 0 of 1 doorbells' in timed_out.stdout, timed_out.stdout
    assert subprocess.run(run('ring', '--to', str(waiter)), stdout=subprocess.PIPE, check=False).returncode == 2  # it left
