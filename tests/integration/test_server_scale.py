"""Our server under load: long handshakes, slow readers, ID reuse, the fd limit, 64-vector guests.

A UNIX socket holds only about 278 messages that carry an fd. Each case here needs far more
messages in flight for one client than that, which a server that drops a client on a full
socket buffer fails (the server before the per-client queue did, every time).
"""
import resource

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import control_request
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPClient
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import WaitTimeout, wait_for

from ivshmem_probe import Probe
from qtest_guest import guest_driven_by_qtest, msix_pending_bits_address, pending, ring


@pytest.fixture(params=['sendmmsg', 'sendmsg'])
def probed(request, start_server):
    """``probed(vectors, *options)``: our server with these options and a probe on it,
    as (socket path, probe), once with each way of sending (a turn of messages per system call,
    and the fallback of one per call). The probes are closed at the end, before the servers stop."""
    probes = []

    def start(vectors, *options):
        sender = ('--no-sendmmsg',) if request.param == 'sendmsg' else ()
        _process, sock, _log = start_server('-n', str(vectors), *(sender + options))
        assert status(sock)['sender'] == request.param
        probes.append(Probe(sock, vectors))
        return sock, probes[-1]

    yield start
    for probe in probes:
        probe.close()


def status(sock):
    return control_request(sock + '.ctl', 'status')


def join(probe, count):
    clients = [probe.connect() for _client in range(count)]
    assert probe.until(lambda: all(probe.settled(c) for c in clients), 30), 'handshakes not done in 30 s'
    return clients


def test_handshakes_far_longer_than_a_socket_buffer_are_all_delivered(probed):
    sock, probe = probed(64)
    clients = [join(probe, 1)[0] for _client in range(40)]  # the 40th handshake: 2,563 messages
    assert [c.closed for c in clients] == [None] * 40
    assert probe.until(lambda: all(probe.knows_everyone(c) for c in clients), 30)
    info = status(sock)
    assert (len(info['clients']), info['refused'], info['dropped']) == (40, 0, 0)


def test_a_client_that_pauses_reading_is_kept_and_catches_up(probed):
    sock, probe = probed(64)
    sleeper = join(probe, 1)[0]
    probe.stop_reading(sleeper)
    later = join(probe, 12)  # 768 announcements wait for the sleeper, about three socket buffers
    waiting = [c['backlog'] for c in status(sock)['clients'] if c['id'] == sleeper.peer_id]
    assert waiting and waiting[0] > 0
    probe.resume_reading(sleeper)
    assert probe.until(lambda: probe.knows_everyone(sleeper), 30)
    assert sleeper.closed is None and all(c.closed is None for c in later)
    assert status(sock)['dropped'] == 0


def test_only_a_client_that_stopped_reading_is_dropped_past_its_backlog_bound(probed):
    sock, probe = probed(64, '--max-backlog', '500')
    stuck = join(probe, 1)[0]
    probe.stop_reading(stuck)
    others = [join(probe, 1)[0] for _client in range(16)]  # 1,024 announcements wait for it
    info = status(sock)
    assert stuck.peer_id not in [c['id'] for c in info['clients']]
    assert (info['dropped'], len(info['clients'])) == (1, 16)
    told = [c for c in others if stuck.peer_id in c.known]  # those who joined before the drop
    assert told and probe.until(lambda: all(stuck.peer_id in c.departures for c in told), 10)
    probe.resume_reading(stuck)
    assert probe.until(lambda: stuck.closed, 10) and stuck.closed == 'closed by the server'
    assert probe.until(lambda: all(c.closed is None and probe.knows_everyone(c) for c in others), 10)


def test_a_departed_id_is_not_handed_out_again_while_others_are_free(probed):
    sock, probe = probed(1, '--account', 'nobody-connects=64000', '--pin', 'nobody-connects=3')
    first, second, third = join(probe, 3)
    assert [first.peer_id, second.peer_id, third.peer_id] == [0, 1, 2]
    probe.close(second)
    wait_for('the departure', lambda: len(status(sock)['clients']) == 2, 5)
    assert [c.peer_id for c in join(probe, 2)] == [4, 5]  # 3 stays pinned, 1 is reused last


def test_the_batch_sender_works_in_the_server_unit_s_sandbox(start_server):
    """The unit denies writable executable memory (MemoryDenyWriteExecute): the batch sender's
    foreign calls (ctypes) still work there, and long handshakes go out whole."""
    _process, sock, _log = start_server('-n', '64', deny_write_execute=True)
    assert status(sock)['sender'] == 'sendmmsg'
    probe = Probe(sock, 64)
    try:
        clients = [join(probe, 1)[0] for _client in range(8)]  # the 8th handshake: 515 messages
        assert probe.until(lambda: all(probe.knows_everyone(c) for c in clients), 30)
    finally:
        probe.close()


def test_the_fd_limit_is_raised_to_the_hard_limit_and_sets_the_client_cap(start_server):
    process, sock, _log = start_server('-n', '16')
    info = status(sock)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the server inherits ours
    with open('/proc/%d/limits' % process.pid) as limits:
        line = [row for row in limits if row.startswith('Max open files')][0].split()
    assert int(line[3]) == hard == info['fd_limit']
    assert info['max_clients'] == min((hard - 128 - 16) // 17, 65536)


def test_six_guests_with_64_vectors_ring_from_the_last_to_the_first_and_back(builtin_lab):
    """Real QEMU: the sixth guest's handshake alone (5 x 64 + 64 fds) overflows a socket buffer."""
    lab = builtin_lab
    qtests = {}
    try:
        lab.server('s', vectors=64)
        names = ['g%d' % index for index in range(6)]
        pba, bar0 = {}, {}
        for index, name in enumerate(names):
            qtests[name], bar0[name] = guest_driven_by_qtest(lab, name, 's', 'master' if index == 0 else 'peer', 64)
            with QMPClient(lab.layout.guest_qmp(name)) as qmp:
                pba[name] = msix_pending_bits_address(qtests[name], qmp)
        ids = dict((c['name'], c['id']) for c in control_request(lab.layout.server_control('s'), 'status')['clients'])
        assert [ids[name] for name in names] == [0, 1, 2, 3, 4, 5]
        for ringer, target, vector in (('g5', 'g0', 63), ('g0', 'g5', 63), ('g0', 'g5', 0)):
            assert not pending(qtests[target], pba[target], vector)

            def rung(ringer=ringer, target=target, vector=vector):
                # A guest learns a newcomer's vectors asynchronously: ring until the doorbell lands.
                ring(qtests[ringer], bar0[ringer], ids[target], vector)
                return pending(qtests[target], pba[target], vector)
            try:
                wait_for('%s to receive the doorbell of %s on vector %d' % (target, ringer, vector), rung, 20)
            except WaitTimeout as exc:  # say whether the server still holds messages for them
                clients = control_request(lab.layout.server_control('s'), 'status')['clients']
                raise AssertionError('%s; server: %s' % (exc, [(c['name'], c['backlog'], c['handshake_done']) for c in clients]))
        assert control_request(lab.layout.server_control('s'), 'status')['dropped'] == 0
    finally:
        for qtest in qtests.values():
            qtest.close()
