"""Behaviour with real qemu-system-x86_64, against our server and QEMU's upstream one."""
import os
import select
import signal
import threading
import time

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._checksum import checksum_files
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_protocol import connect_client
from ansible_collections.ivshmem.fleet.plugins.module_utils._migration import MigrationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPClient, QMPError
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import wait_for

from qtest_guest import guest_driven_by_qtest, msix_pending_bits_address, ring


def ivposition(result):
    return result['guest']['ivshmem'][0]['ivposition']


def fill(path, size_bytes, seed):
    pattern = (seed * (size_bytes // len(seed) + 1))[:size_bytes]
    with open(path, 'r+b') as handle:
        handle.write(pattern)
    return pattern


def test_master_gets_id_0_and_peers_1_to_n(lab):
    lab.server('s')
    results = [lab.guest('m', 's', role='master')] + [lab.guest('p%d' % i, 's') for i in (1, 2, 3)]
    assert [ivposition(r) for r in results] == [0, 1, 2, 3]
    assert [r['guest']['ivshmem'][0]['role'] for r in results] == ['master', 'peer', 'peer', 'peer']


def test_a_peers_migration_is_refused(lab):
    lab.server('s')
    lab.guest('m', 's', role='master')
    peer = lab.guest('p', 's')
    assert peer['guest']['migration']['blocked_reasons']
    with QMPClient(peer['guest']['qmp']) as qmp:
        with pytest.raises(QMPError) as info:
            qmp.command('migrate', {'uri': 'unix:%s/nowhere' % lab.root})
        assert 'peer mode' in str(info.value)
        assert qmp.command('query-status')['status'] == 'running'
    with pytest.raises(ValidationError) as info:
        lab.migrate('p', 'nowhere')
    assert info.value.field == 'guest' and 'peer' in str(info.value)


def test_master_migrates_between_servers_with_memory_intact_and_id_0(lab):
    lab.server('a')
    lab.guest('m', 'a', role='master')
    lab.guest('p', 'a')
    pattern = fill(lab.memory_of('a'), 4 << 20, os.urandom(4093))
    lab.server('b', admission='held', hold_for='m-b')
    lab.guest('m-b', 'b', role='master', state='incoming')
    lab.guest('p', 'a', state='paused')
    result = lab.migrate('m', 'm-b')
    migration = result['migration']
    assert migration['status'] == 'completed'
    assert migration['verification']['ok'] and migration['verification']['destination_ivposition'] == {'ivshmem0': 0}
    with open(lab.memory_of('b'), 'rb') as handle:
        assert handle.read() == pattern
    after = lab.status('m-b')
    assert after['state'] == 'running' and after['ivshmem'][0]['ivposition'] == 0
    assert lab.status('m')['state'] == 'stopped'
    assert lab.migrate('m', 'm-b')['changed'] is False


def test_failed_migration_leaves_the_source_running_with_memory_unchanged(lab):
    lab.server('a', size='16M')
    lab.guest('m', 'a', role='master')
    memory = lab.memory_of('a')
    fill(memory, 16 << 20, os.urandom(65521))
    before, _t = checksum_files([memory])
    lab.server('b', size='16M', admission='held', hold_for='m-b')
    lab.guest('m-b', 'b', role='master', state='incoming')
    destination_pid = lab.status('m-b')['pid']
    # 4 MB/s makes the migration last seconds; the destination dies in the middle of it.
    killer = threading.Timer(1.0, os.kill, (destination_pid, signal.SIGKILL))
    killer.start()
    try:
        with pytest.raises(MigrationError) as info:
            lab.migrate('m', 'm-b', max_bandwidth=4 << 20)
    finally:
        killer.cancel()
    assert 'rolled back' in str(info.value)
    source = lab.status('m')
    assert source['state'] == 'running' and source['ivshmem'][0]['ivposition'] == 0
    after, _t = checksum_files([memory])
    assert after[memory]['checksum'] == before[memory]['checksum']
    assert lab.status('m-b')['pid'] is None


def test_migration_to_a_destination_that_is_gone_fails_early_and_changes_nothing(lab):
    lab.server('a')
    lab.guest('m', 'a', role='master')
    lab.server('b')
    lab.guest('m-b', 'b', role='master', state='incoming')
    os.kill(lab.status('m-b')['pid'], signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(ValidationError) as info:
        lab.migrate('m', 'm-b')
    assert info.value.field == 'destination'
    assert lab.status('m')['state'] == 'running'


def test_doorbells_ring_from_a_guest_to_a_peer(lab):
    """The master's device rings a host-side peer's vector through the server's eventfds."""
    lab.server('s')
    qtest, bar0 = guest_driven_by_qtest(lab, 'm', 's', 'master')
    sock, client = connect_client(lab.layout.server_socket('s'), 2, 5)
    try:
        assert client.peer_id == 1 and sorted(client.peers) == [0, 1]
        # QEMU learns the new peer's eventfds from the server asynchronously: a ring before the
        # last one (vector 1) arrived goes nowhere. Ring it until it lands, then count from zero.
        last = client.peers[client.peer_id][1]

        def landed():
            ring(qtest, bar0, client.peer_id, 1)
            if select.select([last], [], [], 0.1)[0]:
                return os.read(last, 8)
            return None
        wait_for('QEMU to know the new peer', landed, 5)
        for vector in (1, 0, 1):
            ring(qtest, bar0, client.peer_id, vector)
        # An eventfd sums the rings that reached it; the last ring can land after a first read.
        counts = [0, 0]
        deadline = time.monotonic() + 5
        while counts != [1, 2] and time.monotonic() < deadline:
            fds = [client.peers[client.peer_id][vector] for vector in (0, 1)]
            readable, _w, _x = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
            for fd in readable:
                counts[fds.index(fd)] += int.from_bytes(os.read(fd, 8), 'little')
        assert counts == [1, 2]
    finally:
        qtest.close()
        sock.close()
        client.close()


def test_doorbells_ring_between_guests(lab):
    """Each guest's device rings the other guest's device, both ways, through the server."""
    lab.server('s')
    qtest, bar0, pba = {}, {}, {}
    try:
        for name, role in (('m', 'master'), ('p', 'peer')):
            qtest[name], bar0[name] = guest_driven_by_qtest(lab, name, 's', role)
            with QMPClient(lab.layout.guest_qmp(name)) as qmp:
                pba[name] = msix_pending_bits_address(qtest[name], qmp)
        assert [qtest[name]('readl 0x%x' % pba[name]) for name in ('m', 'p')] == [0, 0]
        for ringer, target, target_id, vector in (('m', 'p', 1, 1), ('p', 'm', 0, 0)):
            ring(qtest[ringer], bar0[ringer], target_id, vector)
            wait_for('%s to receive the doorbell of %s' % (target, ringer),
                     lambda: qtest[target]('readl 0x%x' % pba[target]) == 1 << vector, 10)
        assert [qtest[name]('readl 0x%x' % pba[name]) for name in ('m', 'p')] == [1 << 0, 1 << 1]
    finally:
        for client in qtest.values():
            client.close()


def test_phased_migration_as_across_hosts(lab):
    """send on the 'source host', receive on the 'destination host' (one machine, two servers)."""
    lab.server('a')
    lab.guest('m', 'a', role='master')
    pattern = fill(lab.memory_of('a'), 4 << 20, os.urandom(4091))
    lab.server('b', admission='held', hold_for='m-b')
    incoming = lab.guest('m-b', 'b', role='master', state='incoming')['guest']['incoming_uri']
    sent = lab.migrate('m', None, phase='send', uri=incoming)['migration']
    assert sent['status'] == 'completed' and lab.status('m')['state'] == 'migrated'
    assert lab.migrate('m', None, phase='send', uri=incoming)['changed'] is False
    received = lab.migrate(None, 'm-b', phase='receive', expected_checksums=sent['source_checksums'])
    assert received['migration']['verification']['ok']
    assert received['migration']['verification']['destination_ivposition'] == {'ivshmem0': 0}
    assert lab.status('m-b')['state'] == 'running'
    with open(lab.memory_of('b'), 'rb') as handle:
        assert handle.read() == pattern


def test_a_destination_failing_verification_is_discarded_and_the_source_resumes(lab):
    lab.server('a')
    lab.guest('m', 'a', role='master')
    fill(lab.memory_of('a'), 4 << 20, os.urandom(4091))
    lab.server('b')
    incoming = lab.guest('m-b', 'b', role='master', state='incoming')['guest']['incoming_uri']
    sent = lab.migrate('m', None, phase='send', uri=incoming)['migration']
    with pytest.raises(MigrationError):
        lab.migrate(None, 'm-b', phase='receive', expected_checksums=['sha1:not-what-was-sent'])
    assert lab.status('m-b')['pid'] is None
    resumed = lab.migrate('m', None, phase='abort')
    assert resumed['changed'] and lab.status('m')['state'] == 'running'
    after, _t = checksum_files([lab.memory_of('a')], 'sha1')  # as lab.migrate hashes
    assert after[lab.memory_of('a')]['checksum'] == sent['source_checksums'][0]


@pytest.mark.parametrize('uri, why', [
    ('tcp:0.0.0.0:4444', 'listens on every interface'),
    ('tcp:[::]:4444', 'listens on every interface'),
    ('tcp:127.0.0.1:4444', 'in clear from whoever connects first'),
    ('exec:cat', 'is not a unix: or tcp: URI'),
])
def test_an_incoming_guest_never_listens_in_clear_on_the_network(builtin_lab, uri, why):
    builtin_lab.server('b', admission='held', hold_for='m-b')
    with pytest.raises(ValidationError) as info:
        builtin_lab.guest('m-b', 'b', role='master', state='incoming', incoming_uri=uri)
    assert info.value.field == 'incoming_uri' and why in str(info.value), info.value
    assert builtin_lab.status('m-b') is None
