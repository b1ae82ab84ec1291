"""A move to a host whose huge page pool is short is refused before anything changes: real QEMU,
real servers, the real kernel pool. The two "hosts" share this machine's pool, so the
destination is made short for real: a placeholder file takes every page but one (hugepage_pool).

Without the preflight's count such a move got half-way: the destination's server failed to start
("cannot reserve shared memory ...: No space left on device") and the move was rolled back."""
import hashlib
import mmap
import os
import uuid

import pytest

from ansible_collections.ivshmem.fleet.plugins.plugin_utils._move_engine import MoveFailed

from conftest import hugepages_in_use, lab_root
from move_lab import TwoHosts

MIB = 1 << 20


def write_pattern(path, size):
    """Random bytes through a mapping (hugetlbfs takes no write()); their sha1."""
    pattern = os.urandom(size)
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, size) as memory:
            memory[:] = pattern
    finally:
        os.close(fd)
    return hashlib.sha1(pattern).hexdigest()


def sha1_of(path):
    with open(path, 'rb') as handle:
        return hashlib.sha1(handle.read()).hexdigest()


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
