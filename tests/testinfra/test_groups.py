"""Each lab host (or any inventory's hosts): its servers, guests, roles, IDs and memory."""
import pytest

from checks import check_guests, check_pattern, check_region, check_server, fleet_facts, groups_here, holders

testinfra_hosts = ['ansible://hypervisors']


@pytest.fixture(scope='module')
def facts(host):
    return fleet_facts(host)


def inventory_group(host, name):
    for group in host.ansible.get_variables().get('ivshmem_fleet_groups') or []:
        if group['name'] == name:
            return group
    return None


def test_servers_are_supervised_with_their_modes(host, facts):
    for server in facts['servers'].values():
        check_server(host, server)


def test_regions_have_their_owner_group_mode_and_members(host, facts):
    """Each region here is as stated, and each plain group whose master runs here has its region here."""
    regions = facts.get('regions') or {}
    running = [group['name'] for group in host.ansible.get_variables().get('ivshmem_fleet_groups') or []
               if group.get('type') == 'plain' and group['master']['name'] in facts['guests']]
    if not regions and not running:
        pytest.skip('no plain group runs on this host')
    missing = sorted(set(running) - set(regions))
    assert not missing, 'plain groups %s run here without their region' % missing
    for region in regions.values():
        check_region(host, region)


def test_guests_have_their_roles_and_ids(host, facts):
    for name, guests in groups_here(host, facts).items():
        check_guests(holders(facts)[name], guests, inventory_group(host, name))


def test_written_patterns_are_intact(host, facts):
    """Every pattern recorded for a group running here is intact, and each group the inventory
    expects a pattern in (ivshmem_fleet_expected_patterns) has one recorded where it runs."""
    expected = set(host.ansible.get_variables().get('ivshmem_fleet_expected_patterns') or [])
    checked = [name for name, holder in sorted(holders(facts).items()) if check_pattern(host, holder)]
    if not expected and not checked:
        pytest.skip('no pattern written or expected in this inventory')
    missing = sorted((expected & set(holders(facts))) - set(checked))
    assert not missing, 'groups %s run here without a recorded pattern (checked: %s)' % (missing, checked)


def test_guests_that_arrived_by_migration_came_over_tls(host, facts):
    for guest in facts['guests'].values():
        if guest['incoming'] and guest['state'] == 'running':
            assert guest['migration']['tls_creds'] == 'ivshmem-fleet-migration-tls', \
                '%s arrived with migration parameters %s' % (guest['name'], guest['migration'])


def test_migration_credentials_are_root_s_and_the_keys_private(host):
    directory = host.file('/etc/ivshmem-fleet/tls')
    key = host.file('/etc/ivshmem-fleet/tls/server-key.pem')
    assert (directory.user, directory.group, directory.mode) == ('root', 'ivshmem', 0o750)
    assert (key.user, key.group, key.mode) == ('root', 'root', 0o600)  # a QEMU gets a copy only to load it
    handover = host.file('/run/ivshmem-fleet/tls-handover')
    assert not handover.exists or host.check_output('ls -A /run/ivshmem-fleet/tls-handover') == ''


def test_no_guest_without_its_server_or_region(host, facts):
    regions = set(region['memory'] for region in (facts.get('regions') or {}).values())
    for guest in facts['guests'].values():
        for device in guest['ivshmem']:
            if device['type'] == 'plain':
                assert device['memory_path'] in regions, '%s maps %s, no region here' % (guest['name'], device['memory_path'])
            else:
                assert device.get('server') in facts['servers'], '%s uses a server not here' % guest['name']


def test_inventory_groups_are_where_expected(host, facts):
    """Each inventory group runs whole on its expected host (ivshmem_fleet_expected_placement,
    else the host the inventory names) and nowhere else."""
    variables = host.ansible.get_variables()
    groups = variables.get('ivshmem_fleet_groups') or []
    if not groups:
        pytest.skip('no ivshmem_fleet_groups in this inventory')
    placement = variables.get('ivshmem_fleet_expected_placement') or {}
    me = variables['inventory_hostname']
    for group in groups:
        expected = placement.get(group['name'], group['host'])
        assert (group['name'] in holders(facts)) == (expected == me), \
            'group %s: expected on %s, servers and regions here: %s' % (group['name'], expected, sorted(holders(facts)))


def test_rollout_reached_every_host(host):
    variables = host.ansible.get_variables()
    rollout = variables.get('ivshmem_fleet_expected_rollout')
    if not rollout:
        pytest.skip('no rollout expected in this inventory')
    assert host.file('/var/lib/ivshmem-fleet/rollout/%s' % rollout['id']).exists


def test_no_move_left_in_transition(host, facts):
    """No group paused between two hosts: every move finished or rolled back (issue 8)."""
    assert facts.get('moves', {}) == {}, 'moves left open here: %s' % facts.get('moves')


def test_qemu_is_the_expected_version(host):
    """After an upgrade rollout: every host runs the QEMU it was upgraded to (ivshmem_fleet_expected_qemu)."""
    expected = host.ansible.get_variables().get('ivshmem_fleet_expected_qemu')
    if not expected:
        pytest.skip('no QEMU version expected in this inventory')
    version = host.check_output('/usr/bin/qemu-system-x86_64 --version').splitlines()[0]
    assert ('QEMU emulator version %s' % expected) in version, version


def test_guests_run_their_expected_machine_types(host, facts):
    """Guests keep the versioned machine type they first resolved, wherever they moved since."""
    expected = host.ansible.get_variables().get('ivshmem_fleet_expected_machine_types') or {}
    if not expected:
        pytest.skip('no machine types expected in this inventory')
    for name, guest in facts['guests'].items():
        if name in expected:
            assert guest['machine_type'] == expected[name], '%s runs %s' % (name, guest['machine_type'])


def test_live_peers_have_their_device_back_and_read_their_id(host, facts):
    """A peer moved live (ivshmem_fleet_expected_live_peers) runs with its device plugged back,
    and IVPOSITION, read through the BARs its guest gave the device again, says its ID."""
    expected = host.ansible.get_variables().get('ivshmem_fleet_expected_live_peers') or []
    if not expected:
        pytest.skip('no live peers expected in this inventory')
    for name in expected:
        guest = facts['guests'].get(name)
        if guest is None:
            continue
        device = guest['ivshmem'][0]
        assert device['plugged'], '%s runs without its device' % name
        assert device['ivposition'] == device['server_id'], '%s: IVPOSITION %s, server ID %s' % (
            name, device['ivposition'], device['server_id'])
