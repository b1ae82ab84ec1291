"""Peers kept running through a group move (peer_mode: live), on real QEMU with Linux guests.

Two "hosts" (runtime directories, each with its own server of the group, or its own region of a
plain group) on this machine. The
master and the peer run tests/guest/ivshmem-workload.c: the master writes a checked sequence;
the peer checks what it reads, counts its loops in its own RAM (``life``), drops its mappings
when its device is unplugged and maps it again when it is back. A peer that was not restarted
continues its count on the destination and never boots there.
"""
import fcntl
import os
import re
import struct
import termios
import time
import uuid

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import guest_status, unplug_devices
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._move_engine import MoveFailed
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPClient
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import wait_for

from conftest import lab_root
from move_lab import TwoHosts
from test_group_move import assert_whole_on, deployed_with_a_pattern, run_killed_at

LINE = re.compile(r'IVW (?:master|peer) (?:seq=(?P<seq>\d+) ok(?: life=(?P<life>\d+))?(?: bells=(?P<bells>\d+))?|'
                  r'(?P<error>ERROR .*)|boot=(?P<boot>\S+)|remapped id=(?P<id>\d+) life=(?P<at>\d+))')


def boot(image, mode):
    ring = ' ivw.ring=1' if mode == 'master' else ''
    return dict(kernel=os.path.join(image, 'vmlinuz'), initrd=os.path.join(image, 'initrd.img'),
                append='console=ttyS0 quiet ivw.mode=%s%s' % (mode, ring))


@pytest.fixture
def live(request, test_guest):
    machine = getattr(request, 'param', 'pc')  # pc: ACPI hotplug on the root bus; q35: a root port
    binaries, kind = {}, {}
    if machine.startswith('plain:'):  # a plain group: ivshmem-plain on a region of each host's
        machine, kind = machine[len('plain:'):], {'type': 'plain'}
    if machine.endswith('@10.0-10.0'):  # both hosts run QEMU 10.0
        qemu_10 = request.getfixturevalue('qemu_backports')
        machine, binaries = machine[:-len('@10.0-10.0')], {'a': qemu_10, 'b': qemu_10}
    elif machine.endswith('@10.0'):  # host b runs QEMU 10.0 (test_mixed_versions.py)
        machine, binaries = machine[:-len('@10.0')], {'b': request.getfixturevalue('qemu_backports')}
    hosts = TwoHosts(lab_root(), uuid.uuid4().hex[:6], peers=1, memory='256M', peer_mode='live', binaries=binaries,
                     master=dict(boot(test_guest, 'master'), machine=machine),
                     peer=dict(boot(test_guest, 'peer'), machine=machine), **kind)
    hosts.deploy('a')
    # Held open: the move removes the source's guest directories, and the consoles with them.
    hosts.source_consoles = dict((g, open(os.path.join(hosts.layouts['a'].guest_dir(g), 'console.log'), 'rb'))
                                 for g in ('g-master', 'g-peer1'))
    wait_for('the peer to check the master', lambda: len(console(hosts, 'a', 'g-peer1')['seq']) >= 2, 90, interval=0.5)
    if doorbells(hosts):
        bells_grow(hosts, 'a', 'g-peer1')  # doorbells both ways before the move
        bells_grow(hosts, 'a', 'g-master')
    yield hosts
    for handle in hosts.source_consoles.values():
        handle.close()
    hosts.teardown()


def console(hosts, host, guest):
    """What a guest's workload reported on ``host``'s serial console."""
    found = {'seq': [], 'life': [], 'bells': [], 'errors': [], 'boots': [], 'remapped': []}
    held = getattr(hosts, 'source_consoles', {}).get(guest) if host == 'a' else None
    if held is not None:
        held.seek(0)
        text = held.read().decode('utf-8', 'replace')
    else:
        try:
            with open(os.path.join(hosts.layouts[host].guest_dir(guest), 'console.log'), 'rb') as handle:
                text = handle.read().decode('utf-8', 'replace')
        except OSError:
            return found
    for match in LINE.finditer(text):
        if match.group('seq'):
            found['seq'].append(int(match.group('seq')))
            for key in ('life', 'bells'):
                if match.group(key):
                    found[key].append(int(match.group(key)))
        elif match.group('error'):
            found['errors'].append('%s %s: %s' % (guest, host, match.group('error')))
        elif match.group('boot'):
            found['boots'].append(match.group('boot'))
        else:
            found['remapped'].append((int(match.group('id')), int(match.group('at'))))
            found['life'].append(int(match.group('at')))
    return found


def doorbells(hosts):
    """A doorbell group's (a plain group has no server: no IDs, no doorbells)."""
    return hosts.group['type'] == 'doorbell'


def bells_grow(hosts, host, guest):
    """Doorbells keep arriving at ``guest`` on ``host`` (its count grows over two reports)."""
    first = console(hosts, host, guest)['bells']
    return wait_for('%s to receive doorbells on %s' % (guest, host), lambda: len(console(hosts, host, guest)['bells']) >
                    len(first) + 1 and console(hosts, host, guest)['bells'][-1] > (first or [0])[-1], 30, interval=0.5)


def assert_moved_live(hosts):
    """The group runs whole on b; the peer migrated (one boot, its count continued), got its
    device back (with its ID, in a doorbell group) and reads the master's data written after the
    move."""
    where = hosts.where('b')
    assert (where['g-master'], where['g-peer1']) == ('running', 'running'), where
    if doorbells(hosts):
        assert (where['g-master:id'], where['g-peer1:id']) == (0, 1)
        assert where['g-peer1:ivposition'] == 1 and where['g-master:ivposition'] == 0
    assert set(hosts.where('a').values()) == {'absent'}
    before_master, before = console(hosts, 'a', 'g-master'), console(hosts, 'a', 'g-peer1')
    wait_for('the moved peer to read again', lambda: len(console(hosts, 'b', 'g-peer1')['seq']) >= 2, 60, interval=0.5)
    after = console(hosts, 'b', 'g-peer1')
    errors = before['errors'] + after['errors'] + before_master['errors'] + console(hosts, 'b', 'g-master')['errors']
    assert not errors, errors
    assert len(before['boots']) == 1 and after['boots'] == [], 'the peer booted again: %s' % after['boots']
    assert after['remapped'] and (after['remapped'][0][0] == 1 or not doorbells(hosts)), after['remapped']
    assert before['life'] and after['life'][0] > before['life'][-1], 'the peer restarted its count'
    assert all(x <= y for x, y in zip(after["life"], after["life"][1:])) and after["life"][-1] > after["life"][0], after["life"]
    assert after['seq'][-1] > before_master['seq'][-1], "the peer does not see the master's latest data"
    if doorbells(hosts):
        bells_grow(hosts, 'b', 'g-peer1')  # doorbells both ways after the move: master to peer ...
        bells_grow(hosts, 'b', 'g-master')  # ... and peer to master


# q35 (a pcie-root-port per device): known, not yet fixed, and intermittent. Two ways it failed:
# - 2026-11-27, about one run in six: the guest never assigned the BARs of the device plugged back
#   (60 s), as if its pciehp missed the hot-add right after the migration; a rerun then waits again
#   rather than plugging anew;
# - 2026-12-04, 2 runs in 56: the source peer's QEMU 7.2 segfaulted while the guest released the
#   device (QMP closed while waiting for DEVICE_DELETED; dmesg: both at the same code offset).
# Either way the engine stops with MoveFailed (the README's known issue: the move fails naming the
# peer). Only that is tolerated: a q35 move that reports success must pass every check below (a
# peer that rebooted, stale data, a wrong IVPOSITION fail the test), and any other exception is a
# failure. Not strict: the case passes in most runs, and a strict XPASS would fail the suite then.
Q35_KNOWN_FAILURES = 'q35: hot-add after migration sometimes missed, unplug sometimes crashes QEMU (see comment above)'
Q35_PLUG = pytest.param('q35', marks=pytest.mark.xfail(raises=MoveFailed, strict=False, reason=Q35_KNOWN_FAILURES))


@pytest.mark.parametrize('live', ['pc', Q35_PLUG, 'pc@10.0'], indirect=True)
def test_a_peer_moved_live_keeps_running_and_gets_its_device_back(live):
    """pc@10.0: from QEMU 7.2 to 10.0, each guest keeps the type 7.2 resolved (pc-i440fx-7.2)."""
    report = live.engine('a', 'b').run()
    assert report['outcome'] == 'moved', report
    peer = report['peers']['g-peer1']
    assert peer['mode'] == 'live' and peer['restarted'] is False and (peer['id'], peer['ivposition']) == (1, 1)
    assert peer['shared_memory_outage_ms'] > 0 and peer['downtime_ms'] > 0 and peer['total_time_ms'] > 0
    assert report['peer_outage_ms'] >= peer['shared_memory_outage_ms']
    assert report['peers_start_ms'] is None  # no peer was restarted
    assert_moved_live(live)
    if live.binaries:
        assert report['machine_types'] == {'g-master': 'pc-i440fx-7.2', 'g-peer1': 'pc-i440fx-7.2'}, report
        for guest in ('g-master', 'g-peer1'):
            status = guest_status(live.layouts['b'], guest)
            assert (status['record']['argv'][0], status['machine_type']) == (live.binaries['b'], 'pc-i440fx-7.2')
    again = live.engine('a', 'b').run()
    assert not again['changed']


@pytest.mark.parametrize('live', ['plain:pc', 'plain:pc@10.0', 'plain:pc@10.0-10.0'], indirect=True)
def test_a_plain_group_s_peer_moved_live_maps_the_destination_s_region(live):
    """ivshmem-plain: no server, so no IDs and no doorbells. The peer's device and its memory
    backend go on the source (a backend left there makes the destination refuse the peer's stream:
    "Unknown ramblock"); on b, once the master's memory is verified there, the backend is added
    again on b's region (another file on this machine) and the device plugged back onto it.
    plain:pc@10.0: into QEMU 10.0; plain:pc@10.0-10.0: out of it too (QEMU 10.0 under TCG aborts a
    migration whose first RAM block is a plain backend, so guests make their RAM's first:
    GuestSpec.argv)."""
    report = live.engine('a', 'b').run()
    assert report['outcome'] == 'moved', report
    checked = report['verification']
    assert checked['source_checksums'] and checked['source_checksums'] == checked['destination_checksums'], checked
    peer = report['peers']['g-peer1']
    assert peer['mode'] == 'live' and peer['restarted'] is False and peer['shared_memory_outage_ms'] > 0, peer
    assert report['peers_start_ms'] is None  # no peer was restarted
    region = live.memory('b')
    assert region and region != live.group['memory'], region  # b keeps its region elsewhere (its shm_name)
    with QMPClient(guest_status(live.layouts['b'], 'g-peer1', registers=False)['qmp'], timeout=10) as qmp:
        assert qmp.command('qom-get', {'path': '/objects/ivshmem0-mem', 'property': 'mem-path'}) == region
    assert_moved_live(live)
    again = live.engine('a', 'b').run()
    assert not again['changed']


def test_a_live_move_cut_while_the_peer_migrates_is_finished_by_the_same_command(live):
    run_killed_at(live, step='send_peer:a', delay=0.3)
    assert live.journal('a')['step'] == 'committing'  # the master moved; the peer had not
    report = live.engine('a', 'b').run()
    assert 'finished the move' in report['resolved'], report
    assert_moved_live(live)


def test_a_live_move_cut_before_the_master_moved_rolls_back_with_the_device_plugged_again(live):
    run_killed_at(live, step='send:a')
    assert live.where('a')['g-peer1'] == 'running'
    report = live.engine('a', 'b').run()
    assert 'rolled back' in report['resolved'] and report['outcome'] == 'moved', report
    assert_moved_live(live)


def test_an_unplugged_device_leaves_nothing_watching_the_fds_it_freed(live):
    """QEMU 7.2's ivshmem, without KVM's irqfd, watches each of its vector eventfds in the main
    loop and, unplugged, closes them without unwatching them. An fd QEMU opens next gets one of
    those numbers; once it is readable, QEMU runs the freed device's handler on it: it reads
    from the fd (stealing a QMP command, a migration stream) or crashes. Here the fds QEMU gets
    after the unplug are pipes with 8 bytes waiting: none may be read."""
    layout = live.layouts['a']
    status = guest_status(layout, 'g-peer1', registers=False)
    unplug_devices(layout, 'g-peer1', 30)
    writers = []
    with QMPClient(status['qmp'], timeout=10) as qmp:
        for index in range(16):  # more than the device's eventfds (2 vectors, 2 guests)
            reader, writer = os.pipe()
            qmp.command('getfd', {'fdname': 'probe%d' % index}, fd=reader)
            os.close(reader)
            os.write(writer, b'x' * 8)
            writers.append(writer)
        time.sleep(1.0)
        assert qmp.command('query-status')['status'] == 'running'
    unread = [struct.unpack('i', fcntl.ioctl(w, termios.FIONREAD, b'\0' * 4))[0] for w in writers]
    for writer in writers:
        os.close(writer)
    assert unread == [8] * len(writers), 'QEMU read from fds it was only given to hold: %s' % unread


@pytest.fixture
def no_os(request):
    """Guests with no OS: nothing answers an unplug request (the negative control)."""
    hosts = deployed_with_a_pattern(peer_mode='live', peer_unplug_timeout=3, **request.param)
    yield hosts
    hosts.teardown()


@pytest.mark.parametrize('no_os', [{}], indirect=True)
def test_a_peer_that_does_not_release_its_device_leaves_the_group_whole_where_it_was(no_os):
    with pytest.raises(MoveFailed) as info:
        no_os.engine('a', 'b').run()
    assert 'guest g-peer1 did not release its ivshmem device' in str(info.value), info.value
    assert 'runs on a again' in str(info.value)
    assert_whole_on(no_os, 'a')


@pytest.mark.parametrize('no_os', [{'peer_fallback': 'restart'}], indirect=True)
def test_with_peer_fallback_restart_such_a_peer_is_restarted_on_the_destination(no_os):
    report = no_os.engine('a', 'b').run()
    assert report['outcome'] == 'moved'
    assert set(report['fallback']) == {'g-peer1', 'g-peer2'}, report.get('fallback')
    assert [report['peers'][p]['mode'] for p in ('g-peer1', 'g-peer2')] == ['restart', 'restart']
    assert_whole_on(no_os, 'b')
