"""The checks can tell: a memory file with the wrong mode, or a guest with the wrong role, fails them."""
import pytest

from checks import check_guests, check_region, check_server, fleet_facts, groups_here

testinfra_hosts = ['ansible://hypervisors']


def a_group(host):
    facts = fleet_facts(host)
    for name, guests in groups_here(host, facts).items():
        server = facts['servers'][name]
        if server['memory'] and len(guests) > 1:
            return server, guests
    pytest.skip('no group with peers runs on this host')


def test_a_memory_file_with_the_wrong_mode_is_caught(host):
    server, _guests = a_group(host)
    memory = server['memory']
    original = '%04o' % host.file(memory).mode
    host.run_test('chmod 0644 %s', memory)
    try:
        with pytest.raises(AssertionError, match='memory'):
            check_server(host, fleet_facts(host)['servers'][server['name']])
    finally:
        host.run_test('chmod %s %s', original, memory)
    check_server(host, fleet_facts(host)['servers'][server['name']])


def test_a_guest_with_the_wrong_role_is_caught(host):
    server, guests = a_group(host)
    master = [g for g in guests if g['ivshmem'][0]['role'] == 'master'][0]
    peer = [g for g in guests if g['ivshmem'][0]['role'] == 'peer'][0]
    swapped = {'master': {'name': peer['name']}, 'peers': [{'name': master['name']}]}
    with pytest.raises(AssertionError, match='expected'):
        check_guests(server, guests, swapped)


def test_a_region_that_others_may_open_is_caught(host):
    regions = [region for region in (fleet_facts(host).get('regions') or {}).values() if region['memory']]
    if not regions:
        pytest.skip('no plain group runs on this host')
    region = regions[0]
    host.run_test('chmod 0666 %s', region['memory'])
    try:
        with pytest.raises(AssertionError, match='memory'):
            check_region(host, fleet_facts(host)['regions'][region['name']])
    finally:
        host.run_test('chmod %s %s', region['spec']['mode'], region['memory'])
    check_region(host, fleet_facts(host)['regions'][region['name']])
