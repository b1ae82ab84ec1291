"""Which groups the migrate playbook moves, and from where: ivshmem.fleet.plan's ``moves`` for
group= or evacuate= (decided in _groups.py once; the playbook and the group_migrate action take it)."""
import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import GroupPlan, move_source
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout

HOSTS = ['hv1', 'hv2', 'hv3']


def group(name, host):
    return {'name': name, 'host': host, 'size': '4M', 'master': {'name': name + '-m'}, 'peers': [{'name': name + '-p'}]}


# g1 and g2 on hv1, g3 on hv2 (as the inventory says; nothing runs yet).
GROUPS = [group('g1', 'hv1'), group('g2', 'hv1'), group('g3', 'hv2')]


def running(**where):
    """Facts in which each named group's master runs on the host given."""
    facts = dict((host, {'guests': {}, 'moves': {}}) for host in HOSTS)
    for name, host in where.items():
        facts[host]['guests'][name + '-m'] = {'state': 'running'}
    return facts


def moves(facts=None, **params):
    params = dict({'groups': GROUPS, 'hosts': HOSTS, 'facts': facts}, **params)
    return [(m['name'], m['source'], m['destination']) for m in
            GroupPlan(params, Layout(), False).run('planned')['moves']]


def refused(**params):
    with pytest.raises(ValidationError) as info:
        moves(**params)
    return info.value


@pytest.mark.parametrize('case,facts,params,expected', [
    ('a named group, from where it serves', None, dict(group='g3', destination='hv3'), [('g3', 'hv2', 'hv3')]),
    ('a named group found running elsewhere than the inventory says', running(g1='hv3'),
     dict(group='g1', destination='hv2'), [('g1', 'hv3', 'hv2')]),
    ('a named group already on the destination: nothing to do', running(g1='hv2'),
     dict(group='g1', destination='hv2'), []),
    ('every group the evacuated host serves, in the inventory order', None,
     dict(evacuate='hv1', destination='hv3'), [('g1', 'hv1', 'hv3'), ('g2', 'hv1', 'hv3')]),
    ('evacuating counts where the groups run, not the inventory', running(g1='hv2', g3='hv1'),
     dict(evacuate='hv1', destination='hv3'), [('g2', 'hv1', 'hv3'), ('g3', 'hv1', 'hv3')]),
    ('a host that serves nothing', None, dict(evacuate='hv3', destination='hv1'), []),
])
def test_moves(case, facts, params, expected):
    assert moves(facts, **params) == expected, case


def in_transition(source, destination):
    """g1's move from ``source`` to ``destination`` interrupted after the master was sent."""
    facts = running()
    facts[source]['guests']['g1-m'] = {'state': 'migrated'}
    facts[destination]['guests']['g1-m'] = {'state': 'paused'}
    record = {'source': source, 'destination': destination}
    facts[source]['moves']['g1'] = dict(record, step='sent')
    facts[destination]['moves']['g1'] = dict(record, step='loaded')
    return facts


def test_a_group_on_the_destination_moves_when_an_earlier_move_is_in_transition():
    """g1 was moving hv2 -> hv1 when interrupted, so it is planned on hv2 (its source). Moving it to
    hv2 resolves that move first, between hv1 and hv2: it is not 'already there'."""
    facts = in_transition('hv2', 'hv1')
    assert moves(facts, group='g1', destination='hv2') == [('g1', 'hv1', 'hv2')]
    assert moves(facts, group='g1', destination='hv3') == [('g1', 'hv2', 'hv3')]
    # Evacuating hv2 into hv2 keeps the groups there in the order the playbook always had: the
    # ones elsewhere first, then those resolved in place.
    assert moves(facts, evacuate='hv2', destination='hv2') == [('g1', 'hv1', 'hv2')]


def test_each_move_carries_its_group_as_planned():
    plan = GroupPlan({'groups': GROUPS, 'hosts': HOSTS, 'group': 'g2', 'destination': 'hv2'}, Layout(), False).run('planned')
    (move,) = plan['moves']
    assert move['group'] == [g for g in plan['groups'] if g['name'] == 'g2'][0]
    # The group_migrate action decides a move without a source the same way.
    assert move_source(move['group'], 'hv2') == move['source'] == 'hv1'


def test_an_unknown_group_is_refused_naming_it():
    error = refused(group='nope', destination='hv2')
    assert (error.field, str(error)) == ('group', 'group: no group named nope')


@pytest.mark.parametrize('params,field', [
    (dict(destination='hv2'), 'group'),
    (dict(group='g1', evacuate='hv1', destination='hv2'), 'group'),
    (dict(group='g1', destination='elsewhere'), 'destination'),
    (dict(evacuate='hv1'), 'destination'),
])
def test_a_move_needs_one_group_or_host_and_a_destination_of_the_inventory(params, field):
    assert refused(**params).field == field


def test_no_moves_without_group_or_evacuate():
    """deploy.yml and rollout.yml plan without them: their result stays as it was."""
    assert 'moves' not in GroupPlan({'groups': GROUPS, 'hosts': HOSTS}, Layout(), False).run('planned')


def pools(**facts_by_host):
    """Facts whose hosts show these 2M pools (available pages), as ivshmem.fleet.info gives them."""
    facts = running()
    for host, pages in facts_by_host.items():
        facts[host]['hugepages'] = {'2M': {'page_size': 2 << 20, 'total': pages, 'free': pages, 'reserved': 0,
                                           'surplus': 0, 'available': pages}}
    return facts


def test_a_destination_without_the_groups_huge_pages_is_refused_naming_it_and_the_shortfall():
    groups = [dict(group('g1', 'hv1'), hugepages='2M', size='64M'), dict(group('g2', 'hv1'), hugepages='2M'),
              group('g3', 'hv2')]
    error = refused(groups=groups, facts=pools(hv3=16), group='g1', destination='hv3')
    assert (error.field, str(error)) == ('groups[g1]', 'groups[g1]: needs 64 MiB of 2M huge pages; hv3 has 32 MiB available: '
                                                       '32 MiB short')
    # An evacuation counts the groups moving there before: g1 fits alone, g2 not after it.
    error = refused(groups=groups, facts=pools(hv3=33), evacuate='hv1', destination='hv3')
    assert str(error) == ('groups[g2]: needs 4 MiB of 2M huge pages; with the groups moving there before it (g1), '
                          'hv3 has 2 MiB available: 2 MiB short')
    assert moves(pools(hv3=34), groups=groups, evacuate='hv1', destination='hv3') == [('g1', 'hv1', 'hv3'),
                                                                                      ('g2', 'hv1', 'hv3')]
    # Facts without the destination's pools (not gathered) say nothing: the move's preflight decides.
    assert moves(running(), groups=groups, group='g1', destination='hv3') == [('g1', 'hv1', 'hv3')]
    # A destination whose facts show no pool of that size has none.
    facts = pools(hv3=1000)
    facts['hv3']['hugepages'] = {}
    assert 'hv3 has 0 MiB available: 64 MiB short' in str(refused(groups=groups, facts=facts, group='g1', destination='hv3'))


def test_a_group_whose_move_there_is_in_transition_is_left_to_the_preflight():
    """g1's interrupted move hv2 -> hv1 may hold its pages on hv1 already (the facts cannot tell):
    moving it to hv1 or back to hv2 is not refused here; the move's preflight counts them."""
    groups = [dict(group('g1', 'hv1'), hugepages='2M'), group('g2', 'hv1'), group('g3', 'hv2')]
    facts = in_transition('hv2', 'hv1')
    for host in HOSTS:
        facts[host]['hugepages'] = {}
    assert moves(facts, groups=groups, group='g1', destination='hv1') == [('g1', 'hv2', 'hv1')]
    assert moves(facts, groups=groups, group='g1', destination='hv2') == [('g1', 'hv1', 'hv2')]
    error = refused(groups=groups, facts=facts, group='g1', destination='hv3')
    assert 'hv3 has 0 MiB available: 4 MiB short' in str(error)
