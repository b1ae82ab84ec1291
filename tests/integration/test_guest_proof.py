"""Guest-side proof: a Linux guest's own view of the shared memory survives a group migration.

A master guest runs tests/guest/ivshmem-workload.c: a strictly increasing sequence with the
checksum of a data block, checked by the guest itself at every step, and a doorbell rung at a
steady rate. A peer guest reads and checks what the master wrote; a host-side client is a second
peer that counts the doorbells it receives. The group migrates to a second server while the
master writes. The negative control wipes the destination's memory before it runs: the same
assertions must then fail.
"""
import os
import re
import select

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_protocol import connect_client
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import wait_for

from conftest import Lab, lab_root

LINE = re.compile(r'IVW (master|peer) (?:seq=(\d+) ok|(ERROR .*))')


@pytest.fixture
def lab():
    lab = Lab(lab_root(), 'builtin')
    yield lab
    lab.teardown()


def boot(image, mode):
    return dict(memory='256M', kernel=os.path.join(image, 'vmlinuz'), initrd=os.path.join(image, 'initrd.img'),
                append='console=ttyS0 quiet ivw.mode=%s ivw.ring=2' % mode)


def console(lab, guest):
    """(sequence numbers reported, error lines) from a guest's serial console."""
    try:
        with open(os.path.join(lab.layout.guest_dir(guest), 'console.log'), 'rb') as handle:
            text = handle.read().decode('utf-8', 'replace')
    except OSError:
        return [], []
    seqs, errors = [], []
    for match in LINE.finditer(text):
        if match.group(3):
            errors.append('%s %s: %s' % (guest, match.group(1), match.group(3).strip()))
        else:
            seqs.append(int(match.group(2)))
    return seqs, errors


def reported(lab, guest, count=2):
    return wait_for('%s to report' % guest, lambda: len(console(lab, guest)[0]) >= count, 60, interval=0.5)


class DoorbellCounter:
    """A host-side ivshmem client (a peer: connect it after the master) counting vector 0."""

    def __init__(self, socket_path):
        self.sock, self.state = connect_client(socket_path, 2, 10)
        self.fd = self.state.peers[self.state.peer_id][0]

    def count(self, seconds):
        total, deadline = 0, seconds
        while deadline > 0:
            readable, _w, _x = select.select([self.fd], [], [], min(deadline, 0.5))
            if readable:
                total += int.from_bytes(os.read(self.fd, 8), 'little')
            deadline -= 0.5
        return total

    def close(self):
        self.sock.close()
        self.state.close()


def migrate_group(lab, image, wipe_destination):
    lab.server('a', pins={'m': 0, 'p': 1})
    lab.guest('m', 'a', role='master', **boot(image, 'master'))
    lab.guest('p', 'a', **boot(image, 'peer'))
    client = DoorbellCounter(lab.layout.server_socket('a'))
    facts = {'source_client_id': client.state.peer_id}
    try:
        reported(lab, 'm')
        reported(lab, 'p')
        facts['doorbells_on_source'] = client.count(2)
    finally:
        client.close()
    lab.server('b', pins={'m-b': 0, 'p-b': 1}, admission='held', hold_for='m-b')
    incoming = lab.guest('m-b', 'b', role='master', state='incoming', **boot(image, 'master'))['guest']['incoming_uri']
    lab.guest('p', 'a', state='paused', **boot(image, 'peer'))
    if wipe_destination:
        sent = lab.migrate('m', None, phase='send', uri=incoming)['migration']
        with open(lab.memory_of('b'), 'r+b') as handle:
            handle.write(bytes(4 << 20))
        lab.migrate(None, 'm-b', phase='receive', verify=False, expected_checksums=sent.get('source_checksums'))
        lab.guest('m', 'a', state='stopped')
    else:
        facts['migration'] = lab.migrate('m', 'm-b')['migration']
    lab.server('b', pins={'m-b': 0, 'p-b': 1})
    client = DoorbellCounter(lab.layout.server_socket('b'))
    try:
        facts['destination_client_id'] = client.state.peer_id
        lab.guest('p-b', 'b', **boot(image, 'peer'))
        reported(lab, 'p-b')
        reported(lab, 'm-b')
        facts['doorbells_on_destination'] = client.count(3)
    finally:
        client.close()
    return facts


def assert_guests_saw_nothing_lost(lab, facts):
    source, source_errors = console(lab, 'm')
    destination, destination_errors = console(lab, 'm-b')
    peer, peer_errors = console(lab, 'p')
    new_peer, new_peer_errors = console(lab, 'p-b')
    errors = source_errors + destination_errors + peer_errors + new_peer_errors
    assert not errors, 'guests reported errors: %s' % errors
    sequence = source + destination
    assert all(a < b for a, b in zip(sequence, sequence[1:])), 'the master sequence went back: %s' % sequence
    assert destination and destination[0] > source[-1], 'no progress after the migration'
    assert new_peer and new_peer[-1] >= source[-1], "the new peer did not see the master's latest data"
    assert facts['source_client_id'] == facts['destination_client_id'] == 2
    assert facts['doorbells_on_source'] > 0 and facts['doorbells_on_destination'] > 0


def test_a_linux_guest_keeps_working_across_a_group_migration(lab, test_guest):
    facts = migrate_group(lab, test_guest, wipe_destination=False)
    assert facts['migration']['verification']['ok']
    assert_guests_saw_nothing_lost(lab, facts)


def test_negative_control_a_wiped_destination_is_caught_by_the_same_assertions(lab, test_guest):
    facts = migrate_group(lab, test_guest, wipe_destination=True)
    with pytest.raises(AssertionError, match='errors'):
        assert_guests_saw_nothing_lost(lab, facts)
