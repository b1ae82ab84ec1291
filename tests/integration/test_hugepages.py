"""Memory on huge pages: a group's shared memory (a server's or a region's) on the fleet's own
hugetlbfs, guests' RAM on huge pages through memfd, across moves, with the kernel's pool counted
before, during and after. Real QEMU (7.2 and 10.0), real servers, the real kernel pool.

Before these options, memory on huge pages took a hand-made memory_dir on a hugetlbfs someone
mounted, and guest RAM on them extra_args; nothing counted the pool.

A move to a host whose pool is short is refused before anything changes. The two "hosts" share
this machine's pool, so the destination is made short for real: a placeholder file takes every
page but one (hugepage_pool.hold). Without the preflight's count such a move got half-way: the
destination's server failed to start ("cannot reserve shared memory ...: No space left on
device") and the move was rolled back.
"""
import hashlib
import mmap
import os
import uuid

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _hugepages
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError
from ansible_collections.ivshmem.fleet.plugins.module_utils._host_converge import HostConverger
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import ServerManager
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._move_engine import MoveFailed

from conftest import hugepages_in_use, lab_root
from move_lab import TwoHosts
from test_group_move import sha1_of

MIB = 1 << 20


def write_pattern(path, size):
    """A pattern through a mapping (hugetlbfs takes no write()); its sha1."""
    pattern = os.urandom(size)
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, size) as memory:
            memory[:] = pattern
    finally:
        os.close(fd)
    return hashlib.sha1(pattern).hexdigest()


def test_a_doorbell_group_on_huge_pages_moves_whole_and_the_pool_is_counted(hugepage_pool):
    hugepage_pool(80)
    before = hugepages_in_use()
    hosts = TwoHosts(lab_root(), uuid.uuid4().hex[:6], size='2M', peers=1, memory='32M', hugepages='2M',
                     master={'hugepages': '2M'}, peer={'hugepages': '2M'})
    assert hosts.group['hugepage_need'] == {'2M': 66 * MIB}
    try:
        hosts.deploy('a')
        # The server's memory (1 page) and both guests' RAM (16 pages each), all taken at start.
        assert hugepages_in_use() - before == 33
        path = hosts.memory('a')
        assert path == os.path.join(hosts.layouts['a'].hugetlbfs('2M'), 't-%s-a-g' % hosts.tag)
        assert _hugepages.mount_of(os.path.dirname(path))[0] == 'hugetlbfs'
        digest = write_pattern(path, 2 * MIB)
        report = hosts.engine('a', 'b').run()
        assert report['outcome'] == 'moved', report
        here = hosts.where('b')
        assert (here['g-master'], here['g-master:id'], here['g-peer1'], here['g-peer1:id']) == ('running', 0, 'running', 1)
        assert set(hosts.where('a').values()) == {'absent'} and not hosts.memory('a')
        assert sha1_of(hosts.memory('b')) == digest
        assert hugepages_in_use() - before == 33  # a's pages given back, b holds the same
    finally:
        hosts.teardown()
    assert hugepages_in_use() == before


def test_a_plain_group_on_huge_pages_moves_with_its_memory(hugepage_pool):
    hugepage_pool(8)
    before = hugepages_in_use()
    hosts = TwoHosts(lab_root(), uuid.uuid4().hex[:6], type='plain', size='4M', peers=1, hugepages='2M')
    try:
        hosts.deploy('a')
        assert hugepages_in_use() - before == 2
        digest = write_pattern(hosts.memory('a'), 4 * MIB)
        report = hosts.engine('a', 'b').run()
        assert report['outcome'] == 'moved', report
        assert set(hosts.where('a').values()) == {'absent'} and not hosts.memory('a')
        assert sha1_of(hosts.memory('b')) == digest
        assert hugepages_in_use() - before == 2
    finally:
        hosts.teardown()
    assert hugepages_in_use() == before


class WithoutHugepagesOnB(TwoHosts):
    """Host b's guests run without huge pages (its ivshmem_fleet_guest_overrides say so)."""

    def guest_overrides(self, host):
        found = super(WithoutHugepagesOnB, self).guest_overrides(host)
        return dict(found, hugepages=None) if host == 'b' else found


def test_guest_ram_on_huge_pages_moves_from_qemu_7_2_to_10_0_without_them_and_back(hugepage_pool, qemu_backports):
    """The RAM block keeps its name (pc.ram) with and without huge pages, on both QEMU versions."""
    hugepage_pool(40)
    before = hugepages_in_use()
    hosts = WithoutHugepagesOnB(lab_root(), uuid.uuid4().hex[:6], peers=0, memory='32M', binaries={'b': qemu_backports},
                                master={'hugepages': '2M'})
    try:
        hosts.deploy('a')
        assert hugepages_in_use() - before == 16
        report = hosts.engine('a', 'b').run()
        assert report['outcome'] == 'moved', report
        assert hosts.where('b')['g-master'] == 'running' and hugepages_in_use() == before  # RAM as ordinary memory on b
        report = hosts.engine('b', 'a').run()
        assert report['outcome'] == 'moved', report
        assert hosts.where('a')['g-master'] == 'running' and hugepages_in_use() - before == 16
    finally:
        hosts.teardown()
    assert hugepages_in_use() == before


def test_the_host_module_grows_the_pool_predicts_it_and_never_shrinks_it(builtin_lab, hugepage_pool):
    hugepage_pool(0)  # locked, and the pool as it was afterwards
    total = _hugepages.pools()['2M']['total']
    asked = {'hugepages': {'2M': total + 4}}
    predicted = HostConverger(asked, builtin_lab.layout, True).run('present')
    assert predicted['changed'] and predicted['diff']['after']['hugepages'] == {'2M': total + 4}
    assert _hugepages.pools()['2M']['total'] == total  # check mode: nothing changed
    done = HostConverger(asked, builtin_lab.layout, False).run('present')
    assert done['changed'] and done['hugepages']['2M']['total'] == total + 4 == _hugepages.pools()['2M']['total']
    assert not HostConverger(asked, builtin_lab.layout, False).run('present')['changed']
    fewer = HostConverger({'hugepages': {'2M': 0}}, builtin_lab.layout, False).run('present')
    assert not fewer['changed'] and _hugepages.pools()['2M']['total'] == total + 4  # never shrunk


def test_memory_on_huge_pages_elsewhere_than_a_hugetlbfs_is_refused(builtin_lab):
    builtin_lab.servers.append('hx')
    with pytest.raises(FleetError) as info:
        ServerManager(dict(name='hx', size='2M', hugepages='2M', memory_dir=builtin_lab.root, timeout=20,
                           program_dir=os.path.join(builtin_lab.root, 'program')), builtin_lab.layout, False).run('started')
    assert 'memory_dir' in str(info.value) and 'not a hugetlbfs mount point' in str(info.value), info.value


def test_a_move_to_a_host_short_of_huge_pages_is_refused_at_preflight_and_the_group_runs_on(hugepage_pool):
    hugepage_pool(4)  # the group's 2 pages on a, and 2 more for b once the pool is whole again
    hosts = TwoHosts(lab_root(), uuid.uuid4().hex[:6], size='4M', peers=1, memory='32M', hugepages='2M')
    assert hosts.group['hugepage_need'] == {'2M': 4 * MIB}
    try:
        hosts.deploy('a')
        digest = write_pattern(hosts.memory('a'), 4 * MIB)
        server = hosts.handles()['a'].call(dict(step='inspect', group=hosts.group, run_id='look', uri='tcp:x:1'))
        assert server['state']['hugepages_held'] == {'2M': 4 * MIB}
        hugepage_pool.hold(leave=1)
        used = hugepages_in_use()
        with pytest.raises(MoveFailed) as info:
            hosts.engine('a', 'b', attempts=3).run()
        message = str(info.value)
        assert 'group g cannot move to b, so nothing was changed: the group needs 4 MiB of 2M huge pages; ' \
               'b has 2 MiB available: 2 MiB short' in message, message
        assert info.value.report.get('refused') and 'attempt' not in info.value.report, info.value.report
        # Nothing started on b, nothing taken from the pool; the group runs on a as it did.
        assert set(hosts.where('b').values()) == {'absent'} and not hosts.memory('b')
        assert hugepages_in_use() == used
        here = hosts.where('a')
        assert (here['g-master'], here['g-master:id'], here['g-peer1'], here['g-peer1:id']) == ('running', 0, 'running', 1)
        assert here['g-master:ivposition'] == 0
        assert sha1_of(hosts.memory('a')) == digest
        for host in ('a', 'b'):
            assert (hosts.journal(host) or {}).get('step') in (None, 'done'), hosts.journal(host)
        # With its pages free again the same move goes, memory and all.
        hugepage_pool.release()
        report = hosts.engine('a', 'b').run()
        assert report['outcome'] == 'moved', report
        assert hosts.where('b')['g-master:id'] == 0 and sha1_of(hosts.memory('b')) == digest
    finally:
        hosts.teardown()
