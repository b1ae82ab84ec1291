import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import GroupPlan
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout


def group(**overrides):
    data = {'name': 'g1', 'host': 'hv1', 'size': '16M', 'vectors': 2,
            'master': {'name': 'g1-m', 'memory': '32M'}, 'peers': [{'name': 'g1-p1'}, {'name': 'g1-p2'}]}
    data.update(overrides)
    return data


def plan(groups, hosts=('hv1', 'hv2'), facts=None):
    return GroupPlan({'groups': groups, 'hosts': list(hosts), 'facts': facts}, Layout(), False).run('planned')


def field_of(groups, **kwargs):
    with pytest.raises(ValidationError) as info:
        plan(groups, **kwargs)
    return info.value.field


def test_plan_pins_master_0_and_peers_in_order():
    result = plan([group()])
    g1 = result['groups'][0]
    assert g1['server']['pins'] == {'g1-m': 0, 'g1-p1': 1, 'g1-p2': 2}
    assert g1['master']['ivshmem'] == [{'server': 'g1', 'role': 'master', 'vectors': 2}]
    assert [p['ivshmem'][0]['role'] for p in g1['peers']] == ['peer', 'peer']
    assert g1['current_host'] == 'hv1' and result['by_host'] == {'hv1': ['g1'], 'hv2': []}


def test_current_host_follows_the_running_master():
    facts = {'hv1': {'guests': {}}, 'hv2': {'guests': {'g1-m': {'state': 'running'}}}}
    assert plan([group()], facts=facts)['groups'][0]['current_host'] == 'hv2'


@pytest.mark.parametrize('groups,field', [
    ([group(host='nowhere')], 'groups[g1].host'),
    ([group(size='3M')], 'groups[g1].size'),
    ([group(vectors=65)], 'groups[g1].vectors'),
    ([group(master=None)], 'groups[g1].master'),
    ([group(master={'name': 'x', 'memory': 'lots'})], 'groups[g1].master.memory'),
    ([group(peers=[{'name': 'g1-m'}])], 'groups[g1].peers[0].name'),
    ([group(peers=[{'name': 'p', 'ivshmem': []}])], 'groups[g1].peers[0].ivshmem'),
    ([group(), group()], 'groups[g1].name'),
    ([group(), group(name='g2', master={'name': 'g1-m'}, peers=[])], 'groups[g2]'),
    ([group(name='a/b')], 'groups[0].name'),
    ([group(colour='blue')], 'groups[0].colour'),
    ([group(server={'implementation': 'qemu', 'binary': '/x', 'pins': {}})], 'groups[g1].server.pins'),
    ([group(peer_mode='hot')], 'groups[g1].peer_mode'),
    ([group(peer_fallback='maybe')], 'groups[g1].peer_fallback'),
    ([group(peer_unplug_timeout=0)], 'groups[g1].peer_unplug_timeout'),
    ([group(peer_mode='live', peers=[{'name': 'p', 'machine': 'microvm'}])], 'groups[g1].peers[0].ivshmem[0].hotplug'),
])
def test_plan_errors_name_group_and_field(groups, field):
    assert field_of(groups) == field


def test_a_paused_or_migrated_master_does_not_serve():
    """The first version counted paused and incoming masters as serving, so an interrupted move
    looked finished and a rerun said ok while the group stayed frozen."""
    facts = {'hv1': {'guests': {'g1-m': {'state': 'migrated'}}}, 'hv2': {'guests': {'g1-m': {'state': 'paused'}}}}
    g1 = plan([group()], facts=facts)['groups'][0]
    assert g1['current_host'] == 'hv1' and g1['in_transition'] is None


def test_a_move_in_transition_is_planned_from_its_source():
    moves = {'g1': {'step': 'sent', 'source': 'hv2', 'destination': 'hv1'}}
    facts = {'hv1': {'guests': {'g1-m': {'state': 'incoming'}}, 'moves': {'g1': dict(moves['g1'], step='loaded')}},
             'hv2': {'guests': {'g1-m': {'state': 'migrated'}}, 'moves': moves}}
    g1 = plan([group()], facts=facts)['groups'][0]
    assert g1['current_host'] == 'hv2'
    assert g1['in_transition'] == {'source': 'hv2', 'destination': 'hv1', 'steps': {'hv1': 'loaded', 'hv2': 'sent'}}


def test_a_live_group_places_its_peers_devices_for_hotplug_and_not_its_master():
    g1 = plan([group(peer_mode='live')])['groups'][0]
    assert (g1['peer_mode'], g1['peer_fallback'], g1['peer_unplug_timeout']) == ('live', 'none', 30)
    assert [p['ivshmem'][0].get('hotplug') for p in g1['peers']] == [True, True]
    assert 'hotplug' not in g1['master']['ivshmem'][0]
    assert plan([group()])['groups'][0]['peer_mode'] == 'restart'


def test_two_guests_of_the_fleet_under_one_account_are_refused_naming_both():
    """X's account is ivg-x-<the first 8 hex digits of sha256('X')>, which is also what a guest named
    exactly that maps to: each would be admitted to the other's group."""
    from ansible_collections.ivshmem.fleet.plugins.module_utils._model import guest_account
    twin = guest_account('X')[len('ivg-'):]
    assert guest_account(twin) == guest_account('X')
    with pytest.raises(ValidationError) as info:
        plan([group(master={'name': 'X'}, peers=[]), group(name='g2', master={'name': twin}, peers=[])])
    assert info.value.field == 'groups[g2].master.user'
    assert 'guest %s runs as %s, as guest X of group g1 does' % (twin, guest_account('X')) in str(info.value)
    # Named accounts collide the same way.
    with pytest.raises(ValidationError) as info:
        plan([group(master={'name': 'a', 'user': 'shared'}, peers=[]),
              group(name='g2', master={'name': 'b', 'user': 'shared'}, peers=[])])
    assert info.value.field == 'groups[g2].master.user'


def test_two_guests_of_one_group_under_one_account_are_refused_at_the_later_one():
    with pytest.raises(ValidationError) as info:
        plan([group(peers=[{'name': 'g1-p1', 'user': 'ivg-one'}, {'name': 'g1-p2', 'user': 'ivg-one'}])])
    assert info.value.field == 'groups[g1].peers[1].user'
    assert 'guest g1-p1 runs as ivg-one too' in str(info.value)


def test_a_host_s_overrides_go_over_the_group_s_server_and_every_guest_one_way_for_deploy_and_move():
    from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import on_host
    g1 = plan([group()])['groups'][0]
    here = on_host(g1, {'memory_dir': '/dev/hugepages'}, {'binary': '/opt/qemu/bin/qemu-system-x86_64'})
    assert here['server']['memory_dir'] == '/dev/hugepages' and here['server']['name'] == 'g1'
    assert [guest['binary'] for guest in [here['master']] + here['peers']] == ['/opt/qemu/bin/qemu-system-x86_64'] * 3
    assert 'binary' not in g1['master'] and on_host(g1) == g1  # the plan's group is left as it was
    with pytest.raises(ValidationError) as info:
        on_host(g1, guest_overrides=['binary'])
    assert info.value.field == 'guest_overrides'


def test_host_peers_are_admitted_by_their_accounts_and_pinned_after_the_guests():
    g1 = plan([group(host_peers=[{'name': 'lg-client'}, {'name': 'bell', 'user': 'bellringer'}])])['groups'][0]
    assert g1['server']['pins'] == {'g1-m': 0, 'g1-p1': 1, 'g1-p2': 2, 'lg-client': 3, 'bell': 4}
    assert g1['server']['admit'] == ['g1-m', 'g1-p1', 'g1-p2', 'lg-client', 'bell']
    assert g1['server']['accounts'] == {'lg-client': 'ivh-lg-client', 'bell': 'bellringer'}
    assert g1['host_peers'] == [{'name': 'lg-client', 'user': 'ivh-lg-client', 'id': 3},
                                {'name': 'bell', 'user': 'bellringer', 'id': 4}]
    assert g1['guest_names'] == ['g1-m', 'g1-p1', 'g1-p2']  # the move starts guests only


@pytest.mark.parametrize('overrides,field', [
    ({'host_peers': [{'name': 'g1-p1'}]}, 'groups[g1].host_peers[0].name'),  # a guest's name
    ({'host_peers': [{'name': 'h', 'user': 'ivg-g1-m'}]}, 'groups[g1].host_peers[0].user'),  # the master's account
    ({'host_peers': [{'name': 'h', 'user': 'root'}]}, 'groups[g1].host_peers[0].user'),
    ({'host_peers': [{'name': 'h', 'ring': 1}]}, 'groups[g1].host_peers[0].ring'),
    ({'host_peers': [{'name': 'h'}], 'pin_ids': False}, 'groups[g1].host_peers'),
    ({'host_peers': [{'name': 'h'}], 'server': {'implementation': 'qemu', 'binary': '/usr/bin/ivshmem-server'}},
     'groups[g1].host_peers'),
    ({'host_peers': {'name': 'h'}}, 'groups[g1].host_peers'),
])
def test_host_peer_errors_name_the_field(overrides, field):
    assert field_of([group(**overrides)]) == field


def test_a_host_peer_shares_no_account_with_a_guest_of_another_group():
    with pytest.raises(ValidationError) as info:
        plan([group(), group(name='g2', master={'name': 'g2-m'}, peers=[], host_peers=[{'name': 'h', 'user': 'ivg-g1-p2'}])])
    assert info.value.field == 'groups[g2].host_peers[0].user'


def plain(**overrides):
    return group(**dict(dict(type='plain', vectors=None), **overrides))


def test_a_plain_group_is_a_region_its_guests_and_host_accounts_share():
    g1 = plan([plain(host_accounts=['looking-glass'])])['groups'][0]
    assert g1['type'] == 'plain' and g1['server'] is None and g1['ids'] == {}
    assert g1['region'] == {'name': 'g1', 'size': '16M', 'members': ['ivg-g1-m', 'ivg-g1-p1', 'ivg-g1-p2', 'looking-glass']}
    assert g1['memory'] == '/dev/shm/ivshmem-fleet-g1' and g1['size'] == 16 << 20
    assert g1['master']['ivshmem'] == [{'type': 'plain', 'memory_path': '/dev/shm/ivshmem-fleet-g1', 'size': '16M',
                                        'role': 'master'}]
    assert [p['ivshmem'][0]['role'] for p in g1['peers']] == ['peer', 'peer']


@pytest.mark.parametrize('overrides,field', [
    ({'vectors': 2}, 'groups[g1].vectors'),
    ({'server': {'max_clients': 4}}, 'groups[g1].server'),
    ({'host_peers': [{'name': 'h'}]}, 'groups[g1].host_peers'),
    ({'peer_mode': 'hot'}, 'groups[g1].peer_mode'),
    ({'peer_mode': 'live', 'peers': [{'name': 'p', 'machine': 'microvm'}]}, 'groups[g1].peers[0].ivshmem[0].hotplug'),
    ({'region': {'mode': '0666'}}, 'groups[g1].region.mode'),
    ({'region': {'group': 'ivshmem'}}, 'groups[g1].region.group'),
    ({'size': '3M'}, 'groups[g1].size'),
    ({'region': {'owner': 'alice'}}, 'groups[g1].region.owner'),
    ({'host_accounts': ['root']}, 'groups[g1].host_accounts[0]'),
    ({'host_accounts': ['ivg-g1-p1']}, 'groups[g1].host_accounts[0]'),  # a guest's: it is in already
    ({'type': 'ring'}, 'groups[g1].type'),
])
def test_plain_group_errors_name_the_field(overrides, field):
    assert field_of([plain(**overrides)]) == field


def test_a_live_plain_group_places_its_peers_plain_devices_for_hotplug_and_not_its_master():
    g1 = plan([plain(peer_mode='live', peer_fallback='restart')])['groups'][0]
    assert (g1['peer_mode'], g1['peer_fallback']) == ('live', 'restart')
    assert [p['ivshmem'][0] for p in g1['peers']] == [
        {'type': 'plain', 'memory_path': '/dev/shm/ivshmem-fleet-g1', 'size': '16M', 'role': 'peer', 'hotplug': True}] * 2
    assert 'hotplug' not in g1['master']['ivshmem'][0]


def test_a_doorbell_group_takes_no_region():
    assert field_of([group(region={'mode': '0660'})]) == 'groups[g1].region'


def test_a_host_keeps_a_plain_group_s_memory_where_its_overrides_say_and_its_guests_map_it_there():
    from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import on_host
    g1 = plan([plain()])['groups'][0]
    here = on_host(g1, {'shm_name': 'b-g1', 'max_clients': 8}, {'binary': '/opt/qemu'})
    assert here['region'] == dict(g1['region'], shm_name='b-g1') and here['server'] is None
    assert [guest['ivshmem'][0]['memory_path'] for guest in [here['master']] + here['peers']] == ['/dev/shm/b-g1'] * 3
    assert here['master']['binary'] == '/opt/qemu'
    # A live peer is plugged back there, onto that host's file (its hotplug placement kept).
    live = on_host(plan([plain(peer_mode='live')])['groups'][0], {'shm_name': 'b-g1'})
    assert [peer['ivshmem'][0] for peer in live['peers']] == [
        {'type': 'plain', 'memory_path': '/dev/shm/b-g1', 'size': '16M', 'role': 'peer', 'hotplug': True}] * 2


def test_a_host_account_is_no_guest_s_of_another_group():
    with pytest.raises(ValidationError) as info:
        plan([group(), plain(name='g2', master={'name': 'g2-m'}, peers=[], host_accounts=['ivg-g1-p1'])])
    assert info.value.field == 'groups[g2].host_accounts[0]'
    assert 'ivg-g1-p1 is the account of g1-p1 of group g1' in str(info.value)


def test_the_plan_says_the_huge_pages_each_host_s_groups_take_in_whole_pages_per_size():
    """By the host each group serves from now: its shared memory on huge pages and its guests' RAM
    on them, per page size (what the hypervisor role reserves there)."""
    g1 = group(hugepages='2M', master={'name': 'g1-m', 'memory': '32M', 'hugepages': '2M'})
    g2 = group(name='g2', size='4M', hugepages='2M', master={'name': 'g2-m', 'memory': '1G', 'hugepages': '1G'},
               peers=[{'name': 'g2-p'}])
    g3 = group(name='g3', host='hv2', master={'name': 'g3-m'}, peers=[])
    result = plan([g1, g2, g3], hosts=('hv1', 'hv2', 'hv3'))
    assert result['groups'][0]['hugepage_need'] == {'2M': 48 << 20}
    assert result['hugepages'] == {'hv1': {'2M': 24 + 2, '1G': 1}, 'hv2': {}, 'hv3': {}}
    # A group found running elsewhere is counted there.
    facts = {'hv3': {'guests': {'g2-m': {'state': 'running'}}}}
    assert plan([g1, g2, g3], hosts=('hv1', 'hv2', 'hv3'), facts=facts)['hugepages'] == {
        'hv1': {'2M': 24}, 'hv2': {}, 'hv3': {'2M': 2, '1G': 1}}


def test_a_hosts_overrides_change_the_huge_pages_the_group_takes_there():
    """A host whose guest overrides run the guests without huge pages needs none for their RAM
    (guest RAM on huge pages moves to hosts without them): the need is the group's as it runs there."""
    from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import hugepage_need_of, on_host
    g1 = plan([group(hugepages='2M', master={'name': 'g1-m', 'memory': '32M', 'hugepages': '2M'})])['groups'][0]
    assert hugepage_need_of(g1) == g1['hugepage_need'] == {'2M': 48 << 20}
    assert hugepage_need_of(on_host(g1, {}, {'hugepages': None})) == {'2M': 16 << 20}
    assert hugepage_need_of(on_host(g1, {}, {'hugepages': '2M'})) == {'2M': (16 + 32 + 2 * 128) << 20}
