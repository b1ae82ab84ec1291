"""Huge pages: the pools as the kernel shows them, the mounts, the pool request, and memory on
huge pages in the model (sizes, records, the guest's command line)."""
import os

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _hugepages
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import normalize_group
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import GuestSpec, Layout, RegionSpec, ServerSpec

LAYOUT = Layout('/run/t')


def sysfs(tmp_path, pools):
    for kb, (total, free, reserved, surplus) in pools.items():
        path = tmp_path / ('hugepages-%dkB' % kb)
        path.mkdir()
        for name, value in (('nr_hugepages', total), ('free_hugepages', free), ('resv_hugepages', reserved),
                            ('surplus_hugepages', surplus)):
            (path / name).write_text('%d\n' % value)
    return str(tmp_path)


def test_pools_are_read_per_page_size_with_what_new_memory_can_take(tmp_path):
    root = sysfs(tmp_path, {2048: (64, 40, 8, 0), 1048576: (0, 0, 0, 0)})
    assert _hugepages.pools(root) == {
        '2M': {'page_size': 2 << 20, 'total': 64, 'free': 40, 'reserved': 8, 'surplus': 0, 'available': 32},
        '1G': {'page_size': 1 << 30, 'total': 0, 'free': 0, 'reserved': 0, 'surplus': 0, 'available': 0}}
    assert _hugepages.pools(str(tmp_path / 'none')) == {}


MOUNTINFO = """\
22 1 0:21 / /dev/shm rw,nosuid,nodev shared:2 - tmpfs tmpfs rw,size=1024k
40 22 0:40 / /run/t/hugepages-2M rw,nosuid,nodev,noexec - hugetlbfs ivshmem-fleet rw,gid=998,mode=1770,pagesize=2M
41 22 0:41 / /run/t/hugepages-1G rw - hugetlbfs ivshmem-fleet rw,pagesize=1024M
"""


def test_a_memory_dir_must_be_a_hugetlbfs_of_its_page_size(tmp_path):
    info = tmp_path / 'mountinfo'
    info.write_text(MOUNTINFO)
    assert _hugepages.mount_of('/run/t/hugepages-2M', str(info))[0] == 'hugetlbfs'
    _hugepages.check_mount('memory_dir', '/run/t/hugepages-2M/', '2M', str(info))
    _hugepages.check_mount('memory_dir', '/run/t/hugepages-1G', '1G', str(info))
    with pytest.raises(_hugepages.HugepageError, match=r'memory_dir: /run/t/hugepages-2M is a hugetlbfs of 2M pages, not 1G'):
        _hugepages.check_mount('memory_dir', '/run/t/hugepages-2M', '1G', str(info))
    with pytest.raises(_hugepages.HugepageError, match=r'/dev/shm is not a hugetlbfs mount point \(a tmpfs\)'):
        _hugepages.check_mount('memory_dir', '/dev/shm', '2M', str(info))
    with pytest.raises(_hugepages.HugepageError, match='nothing is mounted there'):
        _hugepages.check_mount('memory_dir', '/run/t', '2M', str(info))


def test_a_pool_only_grows_and_a_kernel_that_gives_fewer_pages_is_an_error_with_the_shortfall(tmp_path, monkeypatch):
    root = sysfs(tmp_path, {2048: (64, 64, 0, 0)})
    assert _hugepages.pool_changes({'2M': 32}, root) == {}
    assert _hugepages.pool_changes({'2M': 80}, root) == {'2M': (64, 80)}
    with pytest.raises(_hugepages.HugepageError, match='this kernel has no 1G huge pages'):
        _hugepages.pool_changes({'1G': 1}, root)
    assert _hugepages.pool_changes({'1G': 0}, root) == {}
    assert _hugepages.grow_pool('2M', 80, root) == 80
    real_read = _hugepages._read_int
    monkeypatch.setattr(_hugepages, '_read_int', lambda path: 70 if path.endswith('nr_hugepages') else real_read(path))
    with pytest.raises(_hugepages.HugepageError, match='asked 90 2M huge pages, the kernel gave 70: 40 MiB short'):
        _hugepages.grow_pool('2M', 90, root)


@pytest.mark.parametrize('request_, field', [
    ([], 'hugepages'), ({'4M': 1}, 'hugepages.4M'), ({'2M': -1}, 'hugepages.2M'), ({'2M': 'many'}, 'hugepages.2M')])
def test_a_bad_pool_request_names_its_field(request_, field):
    with pytest.raises(ValidationError) as info:
        _hugepages.check_pool_request('hugepages', request_)
    assert info.value.field == field


def test_memory_on_huge_pages_lives_on_the_fleet_s_hugetlbfs_unless_told_and_is_recorded_only_when_set():
    server = ServerSpec({'name': 'g', 'size': '4M', 'hugepages': '2M'}, LAYOUT)
    assert server.memory_path() == '/run/t/hugepages-2M/ivshmem-fleet-g' and server.to_dict()['hugepages'] == '2M'
    argv = server.argv(LAYOUT, 'python3', 'p.pyz', True)
    assert argv[argv.index('-m') + 1] == '/run/t/hugepages-2M'
    assert 'hugepages' not in ServerSpec({'name': 'g'}).to_dict()  # records from before stay equal
    assert ServerSpec({'name': 'g', 'hugepages': '2M', 'size': '2M', 'memory_dir': '/mnt/h'}).memory_dir == '/mnt/h'
    region = RegionSpec({'name': 'r', 'size': '2M', 'hugepages': '2M'}, LAYOUT)
    assert region.memory_path() == '/run/t/hugepages-2M/ivshmem-fleet-r' and region.to_dict()['hugepages'] == '2M'
    assert 'hugepages' not in RegionSpec({'name': 'r'}).to_dict()


@pytest.mark.parametrize('build, field', [
    (lambda: ServerSpec({'name': 'g', 'size': '1M', 'hugepages': '2M'}), 'size'),
    (lambda: ServerSpec({'name': 'g', 'size': '4M', 'hugepages': '4M'}), 'hugepages'),
    (lambda: RegionSpec({'name': 'r', 'size': '4M', 'hugepages': '1G'}), 'size'),
    (lambda: GuestSpec({'name': 'v', 'memory': '65M', 'hugepages': '2M'}, LAYOUT), 'memory'),
])
def test_memory_that_is_not_whole_huge_pages_is_refused_by_field(build, field):
    with pytest.raises(ValidationError) as info:
        build()
    assert info.value.field == field


def test_guest_ram_on_huge_pages_is_a_memfd_backend_named_as_the_machine_s_own_ram():
    argv = GuestSpec({'name': 'v', 'memory': '64M', 'hugepages': '2M', 'machine': 'q35'}, LAYOUT).argv(
        LAYOUT, 'tcg', False, machine='pc-q35-7.2')
    assert argv[argv.index('-machine') + 1] == 'pc-q35-7.2,memory-backend=pc.ram'
    assert argv[argv.index('-m') + 1] == '64'
    assert 'memory-backend-memfd,id=pc.ram,size=64M,hugetlb=on,hugetlbsize=2097152,prealloc=on' in argv
    plain = GuestSpec({'name': 'v', 'memory': '64M'}, LAYOUT).argv(LAYOUT, 'tcg', False)
    assert not [arg for arg in plain if 'memory-backend' in arg]
    # A guest started before the option existed is the same guest.
    recorded = dict(GuestSpec({'name': 'v'}, LAYOUT).to_dict())
    recorded.pop('hugepages')
    assert not GuestSpec({'name': 'v'}, LAYOUT).differs_from(recorded)


def test_a_group_s_huge_page_need_counts_its_memory_and_its_guests_ram_on_them():
    group = normalize_group(0, {'name': 'g', 'host': 'a', 'size': '4M', 'hugepages': '2M',
                                'master': {'name': 'm', 'memory': '64M', 'hugepages': '2M'},
                                'peers': [{'name': 'p', 'memory': '64M'}, {'name': 'q', 'memory': '32M', 'hugepages': '2M'}]},
                            ['a'], LAYOUT)
    assert group['hugepages'] == '2M' and group['hugepage_need'] == {'2M': (4 + 64 + 32) << 20}
    assert group['server']['hugepages'] == '2M' and 'hugepages' not in group['master']['ivshmem'][0]
    plain = normalize_group(0, {'name': 'r', 'host': 'a', 'type': 'plain', 'size': '2M', 'hugepages': '2M',
                                'master': {'name': 'm'}}, ['a'], LAYOUT)
    assert plain['region']['memory_dir'] == os.path.join('/run/t', 'hugepages-2M')
    assert plain['master']['ivshmem'][0]['memory_path'] == '/run/t/hugepages-2M/ivshmem-fleet-r'
    assert normalize_group(0, {'name': 'n', 'host': 'a', 'master': {'name': 'm'}}, ['a'], LAYOUT)['hugepage_need'] == {}
    with pytest.raises(ValidationError) as info:
        normalize_group(0, {'name': 'r', 'host': 'a', 'type': 'plain', 'size': '4M', 'hugepages': '1G',
                            'master': {'name': 'm'}}, ['a'], LAYOUT)
    assert info.value.field == 'groups[r].size'


def test_the_pools_asked_are_the_planned_pages_and_the_spare_summed_per_size():
    assert _hugepages.pool_request({'2M': 3}, {'2M': 2, '1G': 1}) == {'2M': 5, '1G': 1}
    assert _hugepages.pool_request(None, None) == {}
    with pytest.raises(ValidationError) as info:
        _hugepages.pool_request({'2M': 3}, {'3M': 1})
    assert info.value.field == 'hugepages_spare.3M'
