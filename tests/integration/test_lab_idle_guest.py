"""The lab guests' kernel (tests/lab/idle_guest.py) in real QEMU: the guest ends halted with every
interrupt masked but the ACPI SCI, so its QEMU has nothing to run, while SeaBIOS, which ran first,
has assigned the BARs that IVPOSITION is read through; and it answers PCI hotplug, so a group of
lab guests moves with its peers live (the Molecule rollout's live group)."""
import os
import re
import uuid

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPClient

import idle_guest
from conftest import lab_root
from qtest_guest import monitor, wait_until_idle
from test_group_move import assert_whole_on, deployed_with_a_pattern


def _guest_started(lab, **params):
    lab.server('s', vectors=2)
    lab.guest('g', 's', role='master', **params)
    status = lab.status('g')
    assert status['state'] == 'running', status
    return status


def test_the_idle_kernel_halts_the_guest_with_every_interrupt_masked_after_seabios_set_the_bars(builtin_lab):
    status = _guest_started(builtin_lab, kernel=builtin_lab.idle_kernel())
    assert status['ivshmem'][0]['ivposition'] == 0  # BAR0 assigned by SeaBIOS: IVPOSITION readable
    with QMPClient(status['qmp'], timeout=10) as qmp:
        wait_until_idle(qmp)
        # Every line masked but the cascade (master IRQ 2) and the SCI (slave IRQ 9): no timer.
        masks = [int(mask, 16) for mask in re.findall(r'imr=([0-9a-f]+)', monitor(qmp, 'info pic'))]
        assert sorted(masks) == [0xfb, 0xfd], masks


@pytest.fixture(params=['answers', 'answers@10.0', 'deaf'])
def idle_group(request):
    """A group of lab guests on host a (master and two live peers) with the idle kernel, or with
    its deaf variant (the negative control: nothing ejects the device); @10.0: host b runs QEMU
    10.0, as a lab host does once the rollout upgraded it."""
    deaf = request.param == 'deaf'
    binaries = {'b': request.getfixturevalue('qemu_backports')} if request.param.endswith('@10.0') else {}
    root = lab_root()
    kernel = os.path.join(root, 'idle-guest-%s.bin' % uuid.uuid4().hex[:6])
    with open(kernel, 'wb') as handle:
        handle.write(idle_guest.image(deaf=deaf))
    os.chmod(kernel, 0o644)
    hosts = deployed_with_a_pattern(peer_mode='live', peer_unplug_timeout=5, master=dict(kernel=kernel),
                                    peer=dict(kernel=kernel), binaries=binaries)
    hosts.deaf = deaf
    yield hosts
    hosts.teardown()


def test_lab_guests_release_their_devices_and_read_ivposition_again_after_a_live_move(idle_group):
    """The peers migrate live: each ejects its device when asked and, plugged back on the
    destination, gets the BARs it had, so IVPOSITION reads its new ID; the deaf kernel (the old
    one) ejects nothing and the move rolls back."""
    if idle_group.deaf:
        with pytest.raises(Exception, match='did not release its ivshmem device'):
            idle_group.engine('a', 'b').run()
        assert_whole_on(idle_group, 'a')
        return
    report = idle_group.engine('a', 'b').run()
    assert report['outcome'] == 'moved', report
    assert [report['peers'][p]['mode'] for p in ('g-peer1', 'g-peer2')] == ['live', 'live'], report['peers']
    assert_whole_on(idle_group, 'b')
    here = idle_group.where('b')
    assert [here['g-peer1:ivposition'], here['g-peer2:ivposition']] == [1, 2], here


def test_lab_guests_moved_live_there_and_back(idle_group):
    """Moved out and back (a rollout's two moves): the peer plugged back on b is unplugged and
    moved again."""
    if idle_group.deaf:
        pytest.skip('the deaf kernel never moves live')
    for source, destination in (('a', 'b'), ('b', 'a')):
        report = idle_group.engine(source, destination).run()
        assert report['outcome'] == 'moved', report
        assert [report['peers'][p]['mode'] for p in ('g-peer1', 'g-peer2')] == ['live', 'live'], report['peers']
    assert_whole_on(idle_group, 'a')
