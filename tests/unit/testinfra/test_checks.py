"""The testinfra checks (tests/testinfra/checks.py) on made-up hosts: each fails for the fault it
is there to catch. The real-VM tier runs them on the lab; these run in a second, with no host."""
import importlib.util
import os
import sys

import pytest

TESTINFRA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'testinfra')


def load(name, filename):
    spec = importlib.util.spec_from_file_location(name, os.path.join(TESTINFRA, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checks = load('checks', 'checks.py')
sys.modules.setdefault('checks', checks)  # as testinfra's conftest makes it importable there
infra_groups = load('testinfra_test_groups', 'test_groups.py')

PATTERN = checks.PATTERN_DIR


class File(object):
    def __init__(self, content):
        self.exists = content is not None
        self.content_string = content or ''


class Ansible(object):
    def __init__(self, variables):
        self.variables = variables

    def get_variables(self):
        return self.variables


class Host(object):
    """Files by path, the sha1sum of each memory file, the inventory's variables."""

    def __init__(self, files=None, sums=None, variables=None):
        self.files, self.sums, self.ansible = files or {}, sums or {}, Ansible(variables or {})

    def file(self, path):
        return File(self.files.get(path))

    def check_output(self, command, *args):
        assert command == 'sha1sum %s'
        return '%s  %s' % (self.sums[args[0]], args[0])


def guest(name, role, server_id):
    return {'name': name, 'state': 'running', 'ivshmem': [{'server': 'g1', 'role': role, 'server_id': server_id}]}


SERVER = {'name': 'g1', 'memory': '/dev/shm/ivshmem-fleet-g1'}
INVENTORY = {'name': 'g1', 'master': {'name': 'g1-m'}, 'peers': [{'name': 'g1-p1'}, {'name': 'g1-p2'}]}
GUESTS = [guest('g1-m', 'master', 0), guest('g1-p1', 'peer', 1), guest('g1-p2', 'peer', 2)]


def test_a_group_as_the_inventory_has_it_passes():
    checks.check_guests(SERVER, GUESTS, INVENTORY)
    checks.check_guests(SERVER, GUESTS)


@pytest.mark.parametrize('guests, expected, message', [
    # a peer QEMU runs as a second master, its ID unique
    ([guest('g1-m', 'master', 0), guest('g1-p1', 'master', 1), guest('g1-p2', 'peer', 2)], INVENTORY,
     'g1-p1 runs as master on server g1, expected peer'),
    # master and peer swapped against the inventory, IDs and the one master at 0 all fine otherwise
    ([guest('g1-m', 'peer', 1), guest('g1-p1', 'master', 0), guest('g1-p2', 'peer', 2)], INVENTORY,
     'g1-m runs as peer on server g1, expected master'),
    ([guest('g1-m', 'master', 0), guest('g1-x', 'peer', 1), guest('g1-p2', 'peer', 2)], INVENTORY,
     r'g1-x runs as peer on server g1, expected no role \(not in the group\)'),
    ([guest('g1-m', 'master', 0), guest('g1-p1', None, 1)], None, "g1-p1 reports ivshmem role None"),
    ([guest('g1-m', 'master', 0), guest('g1-p1', 'doorbell', 1)], None, "g1-p1 reports ivshmem role 'doorbell'"),
    ([guest('g1-m', 'master', 0), guest('g1-p1', 'master', 1)], None, r"server g1 has masters \['g1-m', 'g1-p1'\]"),
    ([guest('g1-m', 'master', 0), guest('g1-p1', 'peer', 2), guest('g1-p2', 'peer', 1)], INVENTORY,
     'group g1 runs as .* expected'),
], ids=['peer-as-master', 'swapped', 'stranger', 'no-role', 'unknown-role', 'two-masters', 'ids-swapped'])
def test_a_guest_in_the_wrong_role_is_caught(guests, expected, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_guests(SERVER, guests, expected)


def test_a_recorded_pattern_is_checked_against_the_memory():
    record = {'%s/g1.sha1' % PATTERN: 'abc\n'}
    assert checks.check_pattern(Host(record, {SERVER['memory']: 'abc'}), SERVER) is True
    with pytest.raises(AssertionError, match='memory of g1 changed'):
        checks.check_pattern(Host(record, {SERVER['memory']: 'abd'}), SERVER)
    with pytest.raises(AssertionError, match='no memory file'):
        checks.check_pattern(Host(record), dict(SERVER, memory=None))
    assert checks.check_pattern(Host(), SERVER) is False


def test_a_group_expected_with_a_pattern_but_without_one_recorded_fails():
    facts = {'servers': {'g1': SERVER, 'g3': dict(SERVER, name='g3', memory='/dev/shm/ivshmem-fleet-g3')}}
    variables = {'ivshmem_fleet_expected_patterns': ['g1', 'g3', 'elsewhere']}
    only_g1 = Host({'%s/g1.sha1' % PATTERN: 'abc'}, {SERVER['memory']: 'abc'}, variables)
    with pytest.raises(AssertionError, match=r"groups \['g3'\] run here without a recorded pattern"):
        infra_groups.test_written_patterns_are_intact(only_g1, facts)
    both = Host({'%s/g1.sha1' % PATTERN: 'abc', '%s/g3.sha1' % PATTERN: 'def'},
                {SERVER['memory']: 'abc', '/dev/shm/ivshmem-fleet-g3': 'def'}, variables)
    infra_groups.test_written_patterns_are_intact(both, facts)
    with pytest.raises(pytest.skip.Exception):
        infra_groups.test_written_patterns_are_intact(Host(), facts)


class MemoryFile(object):
    def __init__(self, user='root', group='ivm-g4', mode=0o660, size=4 << 20):
        self.exists, self.user, self.group, self.mode, self.size = True, user, group, mode, size


REGION = {'name': 'g4', 'state': 'present', 'memory': '/dev/shm/ivshmem-fleet-g4', 'members': ['ivg-g4-m', 'reader'],
          'spec': {'size': 4 << 20, 'group': 'ivm-g4', 'mode': '0660', 'members': ['ivg-g4-m', 'reader']}}


class RegionHost(Host):
    def __init__(self, memory):
        super(RegionHost, self).__init__()
        self.memory = memory

    def file(self, path):
        return self.memory


@pytest.mark.parametrize('memory, region, message', [
    (MemoryFile(mode=0o666), REGION, 'is root:ivm-g4 0666'),
    (MemoryFile(user='ivg-g4-m'), REGION, 'is ivg-g4-m:ivm-g4'),
    (MemoryFile(group='ivshmem'), REGION, 'is root:ivshmem'),
    (MemoryFile(size=1 << 20), REGION, 'region g4'),
    (MemoryFile(), dict(REGION, members=['ivg-g4-m', 'reader', 'stranger']), 'has members'),
    (MemoryFile(), dict(REGION, state='missing'), 'region g4 is missing'),
], ids=['mode', 'owner', 'group', 'size', 'member', 'missing'])
def test_a_region_not_as_stated_is_caught(memory, region, message):
    checks.check_region(RegionHost(MemoryFile()), REGION)
    with pytest.raises(AssertionError, match=message):
        checks.check_region(RegionHost(memory), region)


def test_a_plain_group_has_roles_and_no_ids():
    plain = [{'name': n, 'state': 'running', 'ivshmem': [{'type': 'plain', 'role': r, 'server_id': None}]}
             for n, r in (('g4-m', 'master'), ('g4-p', 'peer'))]
    inventory = {'name': 'g4', 'master': {'name': 'g4-m'}, 'peers': [{'name': 'g4-p'}]}
    checks.check_guests(REGION, plain, inventory)
    with pytest.raises(AssertionError, match='expected'):
        checks.check_guests(REGION, plain, {'name': 'g4', 'master': {'name': 'g4-p'}, 'peers': [{'name': 'g4-m'}]})
