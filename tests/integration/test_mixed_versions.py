"""Groups moved between QEMU versions, on real QEMU: host a runs the distribution's QEMU 7.2,
host b QEMU 10.0 from bookworm-backports (two runtime directories on this machine, each with its
own server of the group; scripts/fetch-qemu-backports.sh unpacks 10.0 into the cache).

A machine type alias resolves per version (``pc`` is pc-i440fx-7.2 on 7.2, pc-i440fx-10.0 on
10.0) and a stream loads only into the type it was sent from: without the resolved type carried
to the destination, every move between the two fails (the destination QEMU exits with "Machine
type received is ..."). A type newer than the destination's QEMU cannot move at all: refused
before anything changes.
"""
import os
import uuid

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import GuestManager, guest_status
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._move_engine import MoveFailed

from conftest import lab_root
from move_lab import TwoHosts
from test_group_move import assert_whole_on, sha1_of

GUESTS = ('g-master', 'g-peer1', 'g-peer2')


def mixed(qemu_backports, deploy_on, **options):
    """The group deployed on ``deploy_on`` with default machine types, its memory filled at random."""
    hosts = TwoHosts(lab_root(), uuid.uuid4().hex[:6], binaries={'b': qemu_backports}, **options)
    hosts.deploy(deploy_on)
    with open(hosts.memory(deploy_on), 'r+b') as handle:
        handle.write(os.urandom(4 << 20))
    hosts.digest = sha1_of(hosts.memory(deploy_on))
    return hosts


@pytest.fixture
def from_72(qemu_backports):
    hosts = mixed(qemu_backports, 'a')
    yield hosts
    hosts.teardown()


@pytest.fixture
def from_10(qemu_backports):
    hosts = mixed(qemu_backports, 'b')
    yield hosts
    hosts.teardown()


def qemu_of(hosts, host, guest):
    """(the binary the guest's QEMU runs, the machine type it resolved) on ``host``."""
    status = guest_status(hosts.layouts[host], guest)
    return status['record']['argv'][0], status.get('machine_type')


def test_a_group_started_on_7_2_moves_to_10_0_and_back_with_its_type(from_72, qemu_backports):
    there = from_72.engine('a', 'b', attempts=1).run()
    assert there['outcome'] == 'moved', there
    assert_whole_on(from_72, 'b')
    # Each guest runs QEMU 10.0 on b, still as the type it resolved on 7.2.
    for guest in GUESTS:
        assert qemu_of(from_72, 'b', guest) == (qemu_backports, 'pc-i440fx-7.2'), guest
    assert there['machine_types'] == dict((g, 'pc-i440fx-7.2') for g in GUESTS)
    assert there['qemu_versions']['a'].startswith('7.2.') and there['qemu_versions']['b'].startswith('10.0.')
    back = from_72.engine('b', 'a', attempts=1).run()
    assert back['outcome'] == 'moved', back
    assert_whole_on(from_72, 'a')
    for guest in GUESTS:
        assert qemu_of(from_72, 'a', guest) == ('/usr/bin/qemu-system-x86_64', 'pc-i440fx-7.2'), guest


def test_a_group_started_on_10_0_is_refused_a_move_to_7_2_before_anything_changes(from_10):
    with pytest.raises(MoveFailed) as info:
        from_10.engine('b', 'a', attempts=3).run()
    assert qemu_of(from_10, 'b', 'g-master')[1] == 'pc-i440fx-10.0'
    message = str(info.value)
    assert 'cannot move to a, so nothing was changed' in message, message
    assert 'QEMU 7.2.' in message and 'machine type pc-i440fx-10.0' in message, message
    assert 'started on b with QEMU 10.0.' in message, message
    assert info.value.report.get('refused') and 'attempt' not in info.value.report, info.value.report
    # Nothing started on a, the group untouched on b.
    assert set(from_10.where('a').values()) == {'absent'}
    here = from_10.where('b')
    assert [here[g] for g in GUESTS] == ['running'] * 3 and here['g-master:id'] == 0
    assert sha1_of(from_10.memory('b')) == from_10.digest
    assert (from_10.journal('a') or {}).get('step') in (None, 'done')
    # Check mode predicts the same refusal.
    with pytest.raises(MoveFailed) as predicted:
        from_10.engine('b', 'a').predict()
    assert 'machine type pc-i440fx-10.0' in str(predicted.value)


class Unversioned:
    """A host side from before machine types were reported: inspect says nothing of QEMU."""

    def __init__(self, handle):
        self.handle = handle

    def call(self, params):
        result = self.handle.call(params)
        if params['step'] in ('inspect', 'claim'):
            result.pop('qemu', None)
            result.get('state', {}).pop('machines', None)
        return result


def test_a_stream_the_destination_refuses_fails_with_its_reason_and_is_not_retried(from_10):
    """Without the preflight (nothing reported), the destination starts ``pc`` as 7.2's type and
    QEMU 7.2 refuses the 10.0 stream: the error carries the destination's own words, the group
    runs on b again, and the refusal is not tried a second time."""
    move = from_10.engine('b', 'a', attempts=3)
    for host in ('a', 'b'):
        move.hosts[host] = Unversioned(move.hosts[host])
    with pytest.raises(MoveFailed) as info:
        move.run()
    message = str(info.value)
    assert "Machine type received is 'pc-i440fx-10.0'" in message, message
    assert 'runs on b again' in message and 'not retried' in message, message
    assert info.value.report['attempt'] == 1, info.value.report
    assert_whole_on(from_10, 'b')


def test_a_guest_whose_qemu_lacks_its_machine_type_is_refused_by_field(builtin_lab):
    builtin_lab.server('s')
    with pytest.raises(ValidationError) as info:
        builtin_lab.guest('g', 's', role='master', machine='pc-i440fx-10.0')
    assert info.value.field == 'machine'
    assert 'QEMU 7.2.' in str(info.value) and 'pc-i440fx-10.0' in str(info.value), info.value
    assert builtin_lab.status('g') is None  # nothing set up
    with pytest.raises(ValidationError) as info:
        builtin_lab.guest('g', 's', role='master', binary='/nonexistent/qemu')
    assert info.value.field == 'binary' and builtin_lab.status('g') is None


def test_a_guest_keeps_the_type_its_alias_resolved_to(builtin_lab, qemu_backports):
    builtin_lab.server('s')
    started = builtin_lab.guest('g', 's', role='master')
    assert started['guest']['machine_type'] == 'pc-i440fx-7.2'
    # The type it resolved to is the alias: no drift, no restart.
    again = builtin_lab.guest('g', 's', role='master', machine='pc-i440fx-7.2')
    assert not again['changed'] and not again['warnings'], again
    # Started again on QEMU 10.0 (a host upgraded under it), it keeps its type.
    builtin_lab.guest('g', 's', role='master', state='stopped')
    builtin_lab.server('s', state='restarted')
    restarted = builtin_lab.guest('g', 's', role='master', binary=qemu_backports, restart_on_drift=True)
    assert restarted['changed'] and restarted['guest']['machine_type'] == 'pc-i440fx-7.2', restarted
    assert builtin_lab.status('g')['record']['argv'][0] == qemu_backports


def test_a_guest_started_before_types_were_recorded_gets_its_type_without_a_restart(builtin_lab):
    builtin_lab.server('s')
    builtin_lab.guest('g', 's', role='master')
    pid = builtin_lab.status('g')['pid']
    path = os.path.join(builtin_lab.layout.guest_dir('g'), 'spec.json')
    record = _host.read_json(path)
    del record['machine_type']
    _host.write_json(path, record)
    assert builtin_lab.status('g')['machine_type'] == 'pc-i440fx-7.2'  # asked of QEMU
    again = builtin_lab.guest('g', 's', role='master')
    assert not again['changed'] and builtin_lab.status('g')['pid'] == pid
    assert _host.read_json(path)['machine_type'] == 'pc-i440fx-7.2'


def test_a_plain_master_moves_from_7_2_into_10_0_only_as_its_own_type(builtin_lab, qemu_backports):
    """ivshmem.fleet.migrate on one host: a plain (file-backed) master on QEMU 7.2 into a QEMU 10.0
    destination. Started as ``pc`` there (pc-i440fx-10.0) it is refused before anything moves, by
    field and with the type to use; started as pc-i440fx-7.2 it migrates, memory verified."""
    root = builtin_lab.root
    source_file, destination_file = os.path.join(root, 'plain-src'), os.path.join(root, 'plain-dst')
    pattern = os.urandom(1 << 20)
    for path in (source_file, destination_file):
        with open(path, 'wb') as handle:
            handle.write(pattern if path == source_file else b'\0' * len(pattern))
        os.chmod(path, 0o666)

    def plain(name, path, **params):
        builtin_lab.guests.append(name)
        device = dict(type='plain', memory_path=path, size='1M', role='master')
        return GuestManager(dict(name=name, memory='64M', accel='tcg', ivshmem=[device], timeout=60, **params),
                            builtin_lab.layout, False)

    plain('pm', source_file).run('running')
    plain('pm-b', destination_file, binary=qemu_backports).run('incoming')
    with pytest.raises(ValidationError) as info:
        builtin_lab.migrate('pm', 'pm-b', checksum='sha1')
    assert info.value.field == 'destination', info.value
    assert 'waits as machine type pc-i440fx-10.0, but pm runs pc-i440fx-7.2' in str(info.value), info.value
    assert builtin_lab.status('pm')['state'] == 'running'
    plain('pm-b', destination_file, binary=qemu_backports, machine='pc-i440fx-7.2',
          restart_on_drift=True).run('incoming')
    result = builtin_lab.migrate('pm', 'pm-b', checksum='sha1')
    assert result['migration']['status'] == 'completed' and result['migration']['verification']['ok'], result
    with open(destination_file, 'rb') as handle:
        assert handle.read() == pattern
    assert builtin_lab.status('pm-b')['state'] == 'running'
    assert builtin_lab.status('pm-b')['machine_type'] == 'pc-i440fx-7.2'


def test_a_plain_group_moves_out_of_qemu_10_0_under_tcg(qemu_backports):
    """QEMU 10.0 under TCG aborts a migration whose first RAM block is a plain device's backend
    (tlb_reset_dirty_range_all: "Bad ram offset 0"): a plain group moved on from a 10.0 host would
    lose its master. Guests give their RAM its own backend first, so it never is."""
    hosts = TwoHosts(lab_root(), uuid.uuid4().hex[:6], type='plain', peers=1,
                     binaries={'a': qemu_backports, 'b': qemu_backports})
    try:
        hosts.deploy('a')
        pattern = os.urandom(4 << 20)
        with open(hosts.memory('a'), 'r+b') as handle:
            handle.write(pattern)
        report = hosts.engine('a', 'b').run()
        assert report['outcome'] == 'moved', report
        assert [hosts.where('b')[name] for name in ('g-master', 'g-peer1')] == ['running', 'running']
        with open(hosts.memory('b'), 'rb') as handle:
            assert handle.read() == pattern
    finally:
        hosts.teardown()
