"""Migration streams are encrypted and both ends authenticated (QEMU's TLS), on real QEMU: two
"hosts" on this machine move a group over TCP while a raw socket on the loopback interface
records every byte of the stream. With TLS no piece of the shared memory crosses in clear; in
clear (``tls_dirs=None``, what the collection did before) it does. A destination or a source
whose certificate is not the one expected gets nothing, and the group stays whole where it was."""
import os
import socket
import struct
import threading

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _tls
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import guest_status
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._move_engine import MoveFailed
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._pki import Authority

from test_group_move import assert_whole_on, hosts, run_killed_at  # noqa: F401  # pylint: disable=unused-import

ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; the socket module does not name it


class WireTap:
    """Every TCP payload to or from ``ports`` on the loopback interface (AF_PACKET, root only)."""

    def __init__(self, ports):
        self.ports = set(ports)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)  # root may exceed rmem_max
        self.sock.bind(('lo', 0))
        self.sock.settimeout(0.2)
        self.payload, self.stopped = bytearray(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped.is_set():
            try:
                frame = self.sock.recv(1 << 17)
            except socket.timeout:
                continue
            if len(frame) < 34 or frame[12:14] != b'\x08\x00' or frame[23] != 6:  # IPv4, TCP
                continue
            ip_len = (frame[14] & 0x0F) * 4
            tcp = 14 + ip_len
            sport, dport = struct.unpack('!HH', frame[tcp:tcp + 4])
            if sport in self.ports or dport in self.ports:
                self.payload += frame[tcp + (frame[tcp + 12] >> 4) * 4:]

    def stop(self):
        self.stopped.set()
        self.thread.join()
        self.sock.close()
        return bytes(self.payload)


def samples_of(hosts, count=64, size=64):
    """``count`` pieces of the group's shared memory (random data the fixture wrote)."""
    with open(hosts.memory('a'), 'rb') as handle:
        data = handle.read(4 << 20)
    step = len(data) // count
    return [data[i * step:i * step + size] for i in range(count)]


@pytest.mark.parametrize('tls', [True, False], ids=['tls', 'in clear'])
def test_no_piece_of_the_shared_memory_crosses_the_network_in_clear(hosts, tls):  # noqa: F811
    pieces = samples_of(hosts)
    tap = WireTap([hosts.port])
    try:
        report = hosts.engine('a', 'b', **({} if tls else {'tls_dirs': None})).run()
    finally:
        wire = tap.stop()
    assert report['outcome'] == 'moved', report
    assert_whole_on(hosts, 'b')
    # The whole group crossed: the wire carried at least the shared memory.
    assert len(wire) >= 4 << 20, len(wire)
    seen = sum(1 for piece in pieces if piece in wire)
    if tls:
        assert seen == 0, '%d of %d pieces of the shared memory crossed in clear' % (seen, len(pieces))
    else:
        assert seen >= len(pieces) * 0.9, seen
    # What ivshmem.fleet.info reports of the master that arrived.
    arrived = guest_status(hosts.layouts['b'], 'g-master', registers=False)['migration']
    assert arrived['tls_creds'] == (_tls.CREDS_ID if tls else '')


def test_a_destination_with_a_certificate_of_another_ca_gets_nothing(hosts):  # noqa: F811
    """The source checks the destination's certificate: an impostor's is refused and the group
    resumes on the source, its memory as it was."""
    hosts.tls_dirs()
    hosts.install_credentials('b', authority=Authority(os.path.join(hosts.root, 'rogue-pki')))
    with pytest.raises(MoveFailed) as failed:
        hosts.engine('a', 'b').run()
    assert 'runs on a again' in str(failed.value), failed.value
    assert_whole_on(hosts, 'a')


def test_a_source_the_destination_does_not_expect_is_refused(hosts):  # noqa: F811
    """The destination admits only the source's certificate (CN=a): a fleet host with another
    name (here c, from the same CA) feeding it is refused."""
    hosts.tls_dirs()
    hosts.install_credentials('a', name='c')
    with pytest.raises(MoveFailed) as failed:
        hosts.engine('a', 'b').run()
    assert 'runs on a again' in str(failed.value), failed.value
    assert_whole_on(hosts, 'a')


def test_a_host_without_credentials_fails_the_move_before_anything_changes(hosts):  # noqa: F811
    dirs = hosts.tls_dirs()
    os.unlink(os.path.join(hosts.tls_dir('b'), 'server-key.pem'))
    with pytest.raises(MoveFailed) as failed:
        hosts.engine('a', 'b', tls_dirs=dirs).run()
    assert 'b has no migration credentials' in str(failed.value) and 'server-key.pem' in str(failed.value)
    assert_whole_on(hosts, 'a')  # nothing moved, no lock left


def test_a_move_left_in_between_resolves_even_without_credentials(hosts):  # noqa: F811
    """Resolving needs no TLS: a move killed after verification (source paused) is rolled back
    by the next run, which then refuses to move in clear."""
    run_killed_at(hosts, 'mark:a', 0.0, {'relay_checksums': True})
    assert hosts.where('a')['g-master'] == 'migrated'
    dirs = hosts.tls_dirs()
    os.unlink(os.path.join(hosts.tls_dir('b'), 'client-cert.pem'))
    with pytest.raises(MoveFailed) as failed:
        hosts.engine('a', 'b', tls_dirs=dirs).run()
    assert 'b has no migration credentials' in str(failed.value), failed.value
    assert_whole_on(hosts, 'a')
