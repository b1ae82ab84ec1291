"""Rollout placement (ivshmem.fleet.plan's rollout, _placement.py), table-driven: which spare
keeps which group while its host changes, with every destination's room counted."""
import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import GroupPlan
from ansible_collections.ivshmem.fleet.plugins.module_utils._info import host_memory
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout

M = 1 << 20
# No reserve and no QEMU overhead unless a case says so: a group needs its guests' RAM + its size.
BARE = {'reserve': 0, 'guest_overhead': 0}


def group(name, host, guests_mib=(32,), size='4M'):
    """A group whose guests have these RAM sizes in MiB (the first is the master)."""
    guests = [{'name': '%s-%d' % (name, i), 'memory': '%dM' % mib} for i, mib in enumerate(guests_mib)]
    return {'name': name, 'host': host, 'size': size, 'master': guests[0], 'peers': guests[1:]}


def room(total_mib, available_mib=None, guests=None, servers=None):
    """A host's facts as ivshmem.fleet.info gives them."""
    available = total_mib if available_mib is None else available_mib
    return {'host_memory': {'total': total_mib * M, 'available': available * M},
            'guests': guests or {}, 'servers': servers or {}, 'moves': {}}


def plan(groups, hosts, facts, **rollout):
    params = {'groups': groups, 'hosts': hosts, 'facts': facts, 'rollout': dict(BARE, **rollout)}
    return GroupPlan(params, Layout(), False).run('planned')['rollout']


def refused(groups, hosts, facts, **rollout):
    with pytest.raises(ValidationError) as info:
        plan(groups, hosts, facts, **rollout)
    return info.value


HOSTS = ['hv1', 'hv2', 'hv3', 's1', 's2']

# (case, groups, facts by host in MiB total, rollout options, expected assignment)
PLACEMENTS = [
    ('one spare, as -e spare=s1 always did',
     [group('a', 'hv1'), group('b', 'hv1')], {'s1': 100}, {'batch': ['hv1'], 'destinations': ['s1']},
     {'a': 's1', 'b': 's1'}),
    ('one spare, an empty host of the batch moves nothing',
     [group('a', 'hv1')], {'s1': 100}, {'batch': ['hv2'], 'destinations': ['s1']}, {}),
    ('two spares: the largest first, each on the one with the most room left',
     [group('a', 'hv1', (60,)), group('b', 'hv1', (30,)), group('c', 'hv2', (20,))],
     {'s1': 100, 's2': 80}, {'batch': ['hv1', 'hv2'], 'destinations': ['s1', 's2']},
     {'a': 's1', 'b': 's2', 'c': 's2'}),
    ('two spares filling up: s1 full after two, the third on s2 (ties go in the order given)',
     [group('a', 'hv1', (60,), '4M'), group('b', 'hv2', (60,), '4M'), group('c', 'hv3', (30,), '4M')],
     {'s1': 128, 's2': 64}, {'batch': ['hv1', 'hv2', 'hv3'], 'destinations': ['s1', 's2']},
     {'a': 's1', 'b': 's1', 'c': 's2'}),
    ('any host with room: never one of the batch, hosts serving groups count them',
     [group('a', 'hv1', (40,)), group('b', 'hv2', (40,)), group('c', 'hv3', (40,))],
     {'hv1': 1000, 'hv2': 1000, 'hv3': room(100, guests={'c-0': {'state': 'running', 'memory_mib': 40}},
                                            servers={'c': {'state': 'started', 'spec': {'size': 4 * M}}}),
      's1': 50, 's2': 50},
     {'batch': ['hv1', 'hv2'], 'destinations': 'any'},
     {'a': 'hv3', 'b': 's1'}),
    ('a host of the batch already changed keeps its groups',
     [group('a', 'hv1'), group('b', 'hv2')], {'s1': 100},
     {'batch': ['hv1', 'hv2'], 'skip': ['hv2'], 'destinations': ['s1']},
     {'a': 's1'}),
    ('available memory below total less committed is the room',
     [group('a', 'hv1', (60,))], {'s1': room(1000, 70), 's2': room(1000, 900, guests={
         'x': {'state': 'running', 'memory_mib': 940}})},
     {'batch': ['hv1'], 'destinations': ['s1', 's2']}, {'a': 's1'}),
    ('a stopped guest takes nothing, and capacity caps a host',
     [group('a', 'hv1', (60,))], {'s1': 1000, 's2': room(100, guests={'x': {'state': 'stopped', 'memory_mib': 90}})},
     {'batch': ['hv1'], 'destinations': ['s1', 's2'], 'capacity': {'s1': '50M'}}, {'a': 's2'}),
]


@pytest.mark.parametrize('case, groups, memory, rollout, expected', PLACEMENTS, ids=[c[0] for c in PLACEMENTS])
def test_placement(case, groups, memory, rollout, expected):
    facts = dict((host, value if isinstance(value, dict) else room(value)) for host, value in memory.items())
    result = plan(groups, HOSTS, facts, **rollout)
    assert result['assignment'] == expected
    # No group twice, none left in the batch, each move from its own host to its assigned one.
    moved = [move['name'] for moves in result['moves'].values() for move in moves]
    assert sorted(moved) == sorted(set(moved)) == sorted(expected)
    assert not set(result['assignment'].values()) & set(rollout['batch'])
    for source, moves in result['moves'].items():
        assert source in rollout['batch']
        for move in moves:
            assert move['group']['current_host'] == source and move['destination'] == expected[move['name']]
    # No destination over its room, counting every group placed on it in this batch.
    for host, usage in result['destinations'].items():
        placed = sum(m['need'] for moves in result['moves'].values() for m in moves if m['destination'] == host)
        assert usage['left'] == usage['room'] - placed >= 0


def test_group_too_large_for_any_spare_fails_early_naming_it_and_by_how_much():
    error = refused([group('small', 'hv1'), group('huge', 'hv2', (200, 100), '64M')], HOSTS,
                    {'s1': room(300), 's2': room(200)}, batch=['hv1'], destinations=['s1', 's2'])
    assert error.field == 'groups[huge]'
    assert 'needs 364 MiB' in str(error) and 'most: s1 with 300 MiB' in str(error) and '64 MiB short' in str(error)


def test_a_batch_that_does_not_fit_together_names_the_group_left_over():
    error = refused([group('a', 'hv1', (60,)), group('b', 'hv2', (60,)), group('c', 'hv3', (60,))], HOSTS,
                    {'s1': room(128), 's2': room(63)}, batch=['hv1', 'hv2', 'hv3'], destinations=['s1', 's2'])
    assert error.field == 'groups[c]'
    assert 'a on s1, b on s1' in str(error) and 'most room left is 63 MiB on s2: 1 MiB short' in str(error)


def test_reserve_and_overhead_count():
    groups = [group('a', 'hv1', (32, 32), '8M')]  # 64 MiB of RAM, 2 QEMUs, 8 MiB shared: 200 MiB
    facts = {'s1': room(1024, 400)}
    result = plan(groups, HOSTS, facts, batch=['hv1'], destinations=['s1'], reserve='100M', guest_overhead='64M')
    assert result['moves']['hv1'][0]['need'] == 200 * M
    assert result['destinations']['s1'] == {'room': 300 * M, 'left': 100 * M, 'groups': ['a'], 'hugepages_room': {},
                                            'hugepages_left': {}}
    error = refused(groups, HOSTS, facts, batch=['hv1'], destinations=['s1'], reserve='256M', guest_overhead='64M')
    assert error.field == 'groups[a]' and '56 MiB short' in str(error)


def test_defaults_are_a_reserve_and_an_overhead():
    params = {'groups': [group('a', 'hv1', (32,), '8M')], 'hosts': HOSTS, 'facts': {'s1': room(1024)},
              'rollout': {'batch': ['hv1'], 'destinations': ['s1']}}
    result = GroupPlan(params, Layout(), False).run('planned')['rollout']
    assert result['destinations']['s1']['room'] == (1024 - 256) * M
    assert result['moves']['hv1'][0]['need'] == (32 + 64 + 8) * M


def test_every_group_must_fit_somewhere_before_any_batch():
    """The first play checks the whole inventory with an empty batch: a group of a later batch
    that fits nowhere but on its own host is named before anything moves."""
    error = refused([group('a', 'hv1', (40,)), group('later', 'hv3', (90,))], HOSTS,
                    dict((h, room(100 if h == 'hv3' else 60)) for h in HOSTS), batch=[], destinations='any')
    assert error.field == 'groups[later]' and '34 MiB short' in str(error)


def test_info_reads_total_and_available_memory(tmp_path):
    meminfo = tmp_path / 'meminfo'
    meminfo.write_text('MemTotal:        1003692 kB\nMemFree:          100 kB\nMemAvailable:     812384 kB\n')
    assert host_memory(str(meminfo)) == {'total': 1003692 * 1024, 'available': 812384 * 1024}
    meminfo.write_text('MemTotal:        1003692 kB\n')
    assert host_memory(str(meminfo)) is None
    assert host_memory(str(tmp_path / 'none')) is None
    assert host_memory()['total'] >= host_memory()['available'] > 0


def on_qemu(facts, version, newest):
    """``facts`` of a host whose QEMU runs pc-i440fx-7.2 up to pc-i440fx-``newest``."""
    versions = ['7.2', '8.0', '9.2', '10.0']
    machines = ['pc-i440fx-%s' % v for v in versions[:versions.index(newest) + 1]]
    return dict(facts, qemu={'version': version, 'machines': machines})


def test_a_group_is_placed_only_where_its_qemu_runs_its_machine_types():
    """A group first started on QEMU 10.0 runs pc-i440fx-10.0: a 7.2 spare cannot take it, the 10.0
    one can even with less room; a group of 7.2 types goes anywhere."""
    new = room(1000, guests={'a-0': {'state': 'running', 'memory_mib': 32, 'machine_type': 'pc-i440fx-10.0'}})
    old = room(1000, guests={'b-0': {'state': 'running', 'memory_mib': 32, 'machine_type': 'pc-i440fx-7.2'}})
    facts = {'hv1': on_qemu(new, '10.0.2', '10.0'), 'hv2': on_qemu(old, '7.2.22', '7.2'),
             's1': on_qemu(room(1000), '7.2.22', '7.2'), 's2': on_qemu(room(200), '10.0.2', '10.0')}
    result = plan([group('a', 'hv1'), group('b', 'hv2')], HOSTS, facts, batch=['hv1', 'hv2'], destinations=['s1', 's2'])
    assert result['assignment'] == {'a': 's2', 'b': 's1'}
    error = refused([group('a', 'hv1')], HOSTS, dict(facts, s2=on_qemu(room(200), '7.2.22', '7.2')),
                    batch=['hv1'], destinations=['s1', 's2'])
    assert error.field == 'groups[a]'
    assert str(error) == ("groups[a]: runs machine types pc-i440fx-10.0 (a-0), which no rollout destination's QEMU runs "
                          "(s1: QEMU 7.2.22, s2: QEMU 7.2.22): a QEMU runs the versioned types of its own version and older")


# ---- huge pages: a group's hugepage_need comes from the kernel's pools, not ordinary memory

def on_pages(facts, available):
    """``facts`` with ivshmem.fleet.info's hugepages: {page size: pages available} as the kernel's pools."""
    size_of = {'2M': 2 * M, '1G': 1024 * M}
    return dict(facts, hugepages=dict((size, {'page_size': size_of[size], 'total': pages, 'free': pages, 'reserved': 0,
                                              'surplus': 0, 'available': pages}) for size, pages in available.items()))


def huge(name, host, guests_mib=(32,), size='4M', shared=True, ram=False):
    """A group whose shared memory (``shared``) and guests' RAM (``ram``) are on 2M huge pages."""
    made = group(name, host, guests_mib, size)
    if shared:
        made['hugepages'] = '2M'
    if ram:
        for guest in [made['master']] + made['peers']:
            guest['hugepages'] = '2M'
    return made


def test_what_is_on_huge_pages_is_no_ordinary_memory_a_group_needs():
    """A group's shared memory and its guests' RAM on huge pages come from the pools (outside
    MemAvailable): its ordinary need is what is left, its QEMU overhead included."""
    facts = {'s1': on_pages(room(1024), {'2M': 1000})}
    result = plan([huge('a', 'hv1', (32, 32), '8M', ram=True)], HOSTS, facts, batch=['hv1'], destinations=['s1'],
                  guest_overhead='16M')
    assert result['moves']['hv1'][0]['need'] == 2 * 16 * M
    result = plan([huge('a', 'hv1', (32, 32), '8M')], HOSTS, facts, batch=['hv1'], destinations=['s1'])
    assert result['moves']['hv1'][0]['need'] == 64 * M
    assert result['destinations']['s1']['hugepages_left'] == {'2M': (2000 - 8) * M}


def test_a_group_is_placed_only_where_its_huge_pages_are_free_and_the_error_names_host_size_and_shortfall():
    facts = {'s1': on_pages(room(1024), {'2M': 8}), 's2': on_pages(room(1024), {'2M': 16}), 's3': room(1024)}
    error = refused([huge('g5', 'hv1', size='64M')], HOSTS + ['s3'], facts, batch=['hv1'], destinations=['s1', 's2', 's3'])
    assert error.field == 'groups[g5]'
    # s3 has no pool of 2M pages at all: it counts as none.
    assert str(error) == 'groups[g5]: needs 64 MiB of 2M huge pages; most free: s2 with 32 MiB: 32 MiB short'
    # A destination with the pages takes it even with less ordinary memory than another.
    facts['s3'] = on_pages(room(200), {'2M': 40, '1G': 1})
    result = plan([huge('g5', 'hv1', size='64M')], HOSTS + ['s3'], facts, batch=['hv1'], destinations=['s1', 's2', 's3'])
    assert result['assignment'] == {'g5': 's3'}
    assert result['destinations']['s3']['hugepages_left'] == {'2M': 16 * M, '1G': 1024 * M}


def test_huge_pages_are_counted_per_destination_and_page_size_through_the_batch():
    """Two groups whose memory fits s1 alone, but whose huge pages fit there one at a time: the
    second goes to s2 (more ordinary memory left on s1 notwithstanding), a third fits nowhere."""
    facts = {'s1': on_pages(room(4096), {'2M': 40}), 's2': on_pages(room(512), {'2M': 40})}
    groups = [huge('a', 'hv1', (64,), '64M'), huge('b', 'hv2', (32,), '64M')]
    result = plan(groups, HOSTS, facts, batch=['hv1', 'hv2'], destinations=['s1', 's2'])
    assert result['assignment'] == {'a': 's1', 'b': 's2'}
    assert [result['destinations'][h]['hugepages_left'] for h in ('s1', 's2')] == [{'2M': 16 * M}, {'2M': 16 * M}]
    error = refused(groups + [huge('c', 'hv3', (16,), '32M')], HOSTS, facts, batch=['hv1', 'hv2', 'hv3'],
                    destinations=['s1', 's2'])
    assert error.field == 'groups[c]'
    assert "needs 32 MiB of 2M huge pages; with this batch's groups placed before it (a on s1, b on s2), most free: " \
           "s1 with 16 MiB: 16 MiB short" in str(error), error


def test_guest_ram_on_huge_pages_needs_its_page_size_too():
    """Shared memory on 2M pages and RAM on 1G pages: each size counted, the one short named."""
    made = huge('a', 'hv1', (1024,), '4M')
    made['master']['hugepages'] = '1G'
    facts = {'s1': on_pages(room(512), {'2M': 2, '1G': 0})}
    error = refused([made], HOSTS, facts, batch=['hv1'], destinations=['s1'])
    assert str(error) == ('groups[a]: needs 1024 MiB of 1G and 4 MiB of 2M huge pages; s1 has 0 MiB of 1G available: '
                          '1024 MiB short')
    assert plan([made], HOSTS, {'s1': on_pages(room(512), {'2M': 2, '1G': 1})}, batch=['hv1'],
                destinations=['s1'])['assignment'] == {'a': 's1'}


def test_room_leaves_out_running_guests_and_servers_on_huge_pages():
    """Their memory is in the pools, not in MemTotal's ordinary share: only their QEMU overhead
    and the servers' and guests' ordinary memory count."""
    facts = room(1000, guests={'x': {'state': 'running', 'memory_mib': 512, 'hugepages': '2M'},
                               'y': {'state': 'running', 'memory_mib': 100}},
                 servers={'x': {'state': 'started', 'spec': {'size': 256 * M, 'hugepages': '2M'}},
                          'y': {'state': 'started', 'spec': {'size': 4 * M}}})
    result = plan([group('a', 'hv1', (32,))], HOSTS, {'s1': facts}, batch=['hv1'], destinations=['s1'],
                  guest_overhead='10M')
    assert result['destinations']['s1']['room'] == (1000 - 10 - 110 - 4) * M
