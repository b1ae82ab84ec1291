"""What a correctly running shared-memory group looks like from its host, for testinfra.

Every check takes a testinfra host and the group as the host reports it (ivshmem.fleet.info),
so the suite runs against any inventory; inventory groups (ivshmem_fleet_groups) sharpen it.
"""

PATTERN_DIR = '/var/lib/ivshmem-fleet-test'


def fleet_facts(host):
    result = host.ansible('ivshmem.fleet.info', check=False)
    return result['ansible_facts']['ivshmem_fleet']


def holders(facts):
    """{group name: what holds its memory here}: a doorbell group's server, a plain group's region."""
    return dict(list(facts['servers'].items()) + list((facts.get('regions') or {}).items()))


def groups_here(host, facts):
    """{group name: [guest statuses]} for every server and region this host has."""
    here = dict((name, []) for name in holders(facts))
    regions = dict((region['memory'], name) for name, region in (facts.get('regions') or {}).items() if region['memory'])
    for guest in facts['guests'].values():
        for device in guest['ivshmem']:
            group = device.get('server') or regions.get(device.get('memory_path'))
            if group in here:
                here[group].append(guest)
    return here


def check_region(host, region):
    """A plain group's region: root's file of its size, in its own group with its mode, whose
    members are the ones stated (its guests' accounts and its host accounts)."""
    spec = region['spec']
    assert region['state'] == 'present', 'region %s is %s' % (region['name'], region['state'])
    memory = host.file(region['memory'])
    assert memory.exists and memory.size == spec['size'], 'region %s: %s' % (region['name'], region['memory'])
    assert (memory.user, memory.group, '%04o' % memory.mode) == ('root', spec['group'], spec['mode']), \
        'memory %s is %s:%s %04o, expected root:%s %s' % (
            region['memory'], memory.user, memory.group, memory.mode, spec['group'], spec['mode'])
    assert sorted(region['members'] or []) == sorted(spec['members']), \
        'group %s has members %s, expected %s' % (spec['group'], region['members'], spec['members'])


def check_server(host, server):
    spec = server['spec']
    assert server['state'] == 'started', 'server %s is %s' % (server['name'], server['state'])
    if server['supervisor'] == 'systemd':
        assert host.service('ivshmem-fleet-server-%s' % server['name']).is_running
    sock = host.file(server['socket'])
    assert sock.is_socket
    assert (sock.user, sock.group, '%04o' % sock.mode) == (spec['user'], spec['group'], spec['socket_mode']), \
        'socket %s is %s:%s %04o' % (server['socket'], sock.user, sock.group, sock.mode)
    if server['memory']:
        memory = host.file(server['memory'])
        assert memory.exists and memory.size == spec['size']
        assert (memory.user, '%04o' % memory.mode) == (spec['user'], spec['memory_mode']), \
            'memory %s is %s %04o, expected %s %s' % (
                server['memory'], memory.user, memory.mode, spec['user'], spec['memory_mode'])


def check_guests(server, guests, expected=None):
    """One running master at ID 0, running peers with distinct IDs; each guest in the role and
    at the ID the inventory gives it (master 0, peers 1.. in order), when the group is given.
    A plain group (``server`` is its region) has roles and no IDs."""
    plain = 'members' in server  # a region's status
    want = {}
    if expected:
        want = dict([(expected['master']['name'], ('master', None if plain else 0))] +
                    [(p['name'], ('peer', None if plain else i + 1)) for i, p in enumerate(expected.get('peers') or [])])
    roles = {}
    for guest in guests:
        device = guest['ivshmem'][0]
        # The role QEMU resolved for the device (its QOM master property, read by info).
        role = device.get('role')
        assert guest['state'] == 'running', '%s is %s' % (guest['name'], guest['state'])
        assert role in ('master', 'peer'), '%s reports ivshmem role %r' % (guest['name'], role)
        if want:  # the inventory's role for it: a guest the group does not name has none
            wanted = want.get(guest['name'], ('no role (not in the group)',))[0]
            assert role == wanted, '%s runs as %s on server %s, expected %s' % (guest['name'], role, server['name'], wanted)
        roles[guest['name']] = (role, device.get('server_id'))
    masters = [name for name, (role, _id) in roles.items() if role == 'master']
    assert len(masters) == 1, 'server %s has masters %s' % (server['name'], masters)
    if not plain:
        assert roles[masters[0]][1] == 0, 'master %s has ID %s' % (masters[0], roles[masters[0]][1])
        ids = [peer_id for _role, peer_id in roles.values()]
        assert len(set(ids)) == len(ids), 'IDs %s are not distinct' % ids
    if want:
        assert roles == want, 'group %s runs as %s, expected %s' % (server['name'], roles, want)


def check_pattern(host, server):
    """Where a test wrote a pattern into the memory, the memory still holds it: True when a
    pattern was recorded for this server's group and checked, False when none was recorded.
    A recorded pattern the server has no memory file for is a failure, not a pass."""
    record = host.file('%s/%s.sha1' % (PATTERN_DIR, server['name']))
    if not record.exists:
        return False
    assert server['memory'], 'group %s has a recorded pattern but reports no memory file here' % server['name']
    actual = host.check_output('sha1sum %s', server['memory']).split()[0]
    assert actual == record.content_string.strip(), 'memory of %s changed' % server['name']
    return True
