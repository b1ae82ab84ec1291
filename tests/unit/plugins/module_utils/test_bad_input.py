"""Bad input, table-driven: every case fails early with an error that names the field, and
nothing on the host changes (files under the runtime directory, systemd units, /dev/shm)."""
import os
import socket
import threading

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import GroupPlan
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import GuestManager
from ansible_collections.ivshmem.fleet.plugins.module_utils._host_converge import HostConverger
from ansible_collections.ivshmem.fleet.plugins.module_utils._info import HostInfo
from ansible_collections.ivshmem.fleet.plugins.module_utils._migration import Migration
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPClient, QMPError
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import ServerManager
from ansible_collections.ivshmem.fleet.plugins.module_utils._vm import read_word

HUGE = '9' * 400 + 'K'
GROUP = {'name': 'g', 'host': 'hv1', 'master': {'name': 'm'}}


def group(**changes):
    return {'hosts': ['hv1'], 'groups': [dict(GROUP, **changes)]}


def rollout(facts=None, **options):
    """The plan's rollout for the group on hv1, with hv2 as the spare (1 GiB, all of it available)."""
    memory = {'hv2': {'host_memory': {'total': 1 << 30, 'available': 1 << 30}}}
    return {'hosts': ['hv1', 'hv2'], 'groups': [GROUP], 'facts': memory if facts is None else facts,
            'rollout': dict({'batch': ['hv1'], 'destinations': ['hv2']}, **options)}


CASES = [
    # server module
    (ServerManager, 'started', {}, 'name'),
    (ServerManager, 'started', {'name': '../x'}, 'name'),
    (ServerManager, 'started', {'name': 's', 'size': HUGE}, 'size'),
    (ServerManager, 'started', {'name': 's', 'size': '3M'}, 'size'),
    (ServerManager, 'started', {'name': 's', 'size': True}, 'size'),
    (ServerManager, 'started', {'name': 's', 'vectors': 65}, 'vectors'),
    (ServerManager, 'started', {'name': 's', 'vectors': True}, 'vectors'),
    (ServerManager, 'started', {'name': 's', 'implementation': 'ours'}, 'implementation'),
    (ServerManager, 'started', {'name': 's', 'pins': {'g': True}}, 'pins.g'),
    (ServerManager, 'started', {'name': 's', 'pins': {'g': 1.5}}, 'pins.g'),
    (ServerManager, 'started', {'name': 's', 'pins': 'm=0'}, 'pins'),
    (ServerManager, 'started', {'name': 's', 'socket_mode': 660}, 'socket_mode'),
    (ServerManager, 'started', {'name': 's', 'memory_mode': 'rw'}, 'memory_mode'),
    (ServerManager, 'started', {'name': 's', 'program_dir': '/proc/ivshmem'}, 'program_dir'),  # was a RecursionError
    (ServerManager, 'started', {'name': 's', 'timeout': 0}, 'timeout'),
    (ServerManager, 'started', {'name': 's', 'socket_mode': 444}, 'socket_mode'),  # ambiguous: 0444 or 0674
    (ServerManager, 'started', {'name': 's', 'max_clients': 0}, 'max_clients'),
    (ServerManager, 'started', {'name': 's', 'memory_dir': 'shm'}, 'memory_dir'),
    (ServerManager, 'started', {'name': 's', 'shm_name': '/etc/passwd'}, 'shm_name'),
    (ServerManager, 'started', {'name': 's', 'user': 'two words'}, 'user'),
    (ServerManager, 'started', {'name': 's', 'admission': 'held'}, 'hold_for'),
    (ServerManager, 'started', {'name': 's', 'admit': 'm'}, 'admit'),
    (ServerManager, 'started', {'name': 's', 'admit': ['../m']}, 'admit[0]'),
    (ServerManager, 'started', {'name': 's', 'admit_any': 'yes please'}, 'admit_any'),
    (ServerManager, 'started', {'name': 's', 'admit_any': True, 'pins': {'m': 0}}, 'admit_any'),
    (ServerManager, 'started', {'name': 's', 'accounts': ['m']}, 'accounts'),
    (ServerManager, 'started', {'name': 's', 'pins': {'m': 0}, 'accounts': {'m': 'a' * 33}}, 'accounts.m'),
    (ServerManager, 'started', {'name': 's', 'user': 'a' * 33}, 'user'),
    (ServerManager, 'started', {'name': 's', 'pins': {'a': 0, 'b': 1}, 'accounts': {'a': 'qemu', 'b': 'qemu'}},
     'accounts.b'),
    # guest module
    (GuestManager, 'running', {'name': 'a b'}, 'name'),
    (GuestManager, 'running', {'name': 'g', 'timeout': 0}, 'timeout'),  # left a record behind
    (GuestManager, 'running', {'name': 'g', 'user': 'root'}, 'user'),
    (GuestManager, 'running', {'name': 'g', 'group': 'disk'}, 'group'),
    (GuestManager, 'running', {'name': 'g\n'}, 'name'),
    (GuestManager, 'incoming', {'name': 'g', 'incoming_uri': 'tcp:0.0.0.0:4444'}, 'incoming_uri'),
    (GuestManager, 'running', {'name': 'g', 'memory': HUGE}, 'memory'),
    (GuestManager, 'running', {'name': 'g', 'memory': '1K'}, 'memory'),
    (GuestManager, 'running', {'name': 'g', 'cpus': 0}, 'cpus'),
    (GuestManager, 'running', {'name': 'g', 'machine': True}, 'machine'),
    (GuestManager, 'running', {'name': 'g', 'machine': 'pc;reboot'}, 'machine'),
    (GuestManager, 'running', {'name': 'g', 'accel': 'hvf'}, 'accel'),
    (GuestManager, 'running', {'name': 'g', 'disks': True}, 'disks'),
    (GuestManager, 'running', {'name': 'g', 'disks': [{'path': 'disk.qcow2'}]}, 'disks[0].path'),
    (GuestManager, 'running', {'name': 'g', 'disks': [{'path': '/d', 'format': 'vmdk'}]}, 'disks[0].format'),
    (GuestManager, 'running', {'name': 'g', 'extra_args': '-S'}, 'extra_args'),
    (GuestManager, 'running', {'name': 'g', 'initrd': '/boot/initrd'}, 'kernel'),
    (GuestManager, 'running', {'name': 'g', 'ivshmem': {'server': 's'}}, 'ivshmem'),
    (GuestManager, 'running', {'name': 'g', 'ivshmem': [{'type': 'doorbell'}]}, 'ivshmem[0]'),
    (GuestManager, 'running', {'name': 'g', 'ivshmem': [{'server': 's', 'vectors': 65}]}, 'ivshmem[0].vectors'),
    (GuestManager, 'running', {'name': 'g', 'ivshmem': [{'server': 's', 'role': 'boss'}]}, 'ivshmem[0].role'),
    (GuestManager, 'running', {'name': 'g', 'ivshmem': [{'server': 's'}, {'server': 's'}]}, 'ivshmem[1]'),
    (GuestManager, 'running', {'name': 'g', 'ivshmem': [{'type': 'plain', 'memory_path': '/m', 'size': HUGE}]},
     'ivshmem[0].size'),
    # migrate module
    (Migration, 'migrated', {'phase': 'sideways', 'guest': 'a', 'destination': 'b'}, 'phase'),
    (Migration, 'migrated', {'destination': 'b'}, 'guest'),
    (Migration, 'migrated', {'guest': 'a', 'destination': 'a'}, 'destination'),
    (Migration, 'migrated', {'phase': 'send', 'guest': 'a'}, 'uri'),
    (Migration, 'migrated', {'phase': 'send', 'guest': 'a', 'uri': 'tcp:192.0.2.2:4444'}, 'uri'),
    (Migration, 'migrated', {'guest': 'a', 'destination': 'b', 'uri': 'exec:cat > /tmp/x'}, 'uri'),
    (Migration, 'migrated', {'phase': 'receive', 'destination': 'b'}, 'expected_checksums'),
    (Migration, 'migrated', {'phase': 'receive', 'destination': 'b', 'expected_checksums': 'abc'},
     'expected_checksums'),
    (Migration, 'migrated', {'guest': 'a', 'destination': 'b', 'timeout': 0}, 'timeout'),
    (Migration, 'migrated', {'guest': 'a', 'destination': 'b', 'max_bandwidth': -1}, 'max_bandwidth'),
    (Migration, 'migrated', {'guest': 'a', 'destination': 'b', 'checksum': 'md5'}, 'checksum'),
    # plan module and the group variables
    # host module: every item checked before anything starts (the first ones here are good)
    (HostConverger, 'present', {'guests': 'g'}, 'guests'),
    (HostConverger, 'present', {'guests': ['g']}, 'guests[0]'),
    (HostConverger, 'present', {'servers': [{'name': 's'}, {'name': 's', 'sizee': '4M'}]}, 'servers[1]'),
    (HostConverger, 'present', {'servers': [{'name': 's'}, {'name': 's'}]}, 'servers[1].name'),
    (HostConverger, 'present', {'servers': [{'name': 's'}], 'guests': [{'name': 'g', 'memory': '1K'}]},
     'guests[0].memory'),
    (HostConverger, 'present', {'guests': [{'name': 'g'}, {'name': 'h', 'ivshmem': [{'type': 'doorbell'}]}]},
     'guests[1].ivshmem[0]'),
    (GroupPlan, 'planned', {'hosts': ['hv1'], 'groups': 'g'}, 'groups'),
    (GroupPlan, 'planned', {'hosts': 'hv1', 'groups': []}, 'hosts'),
    (GroupPlan, 'planned', group(host='hv9'), 'groups[g].host'),
    (GroupPlan, 'planned', group(server='oops'), 'groups[g].server'),
    (GroupPlan, 'planned', group(server={'socket_mode': 660}), 'groups[g].socket_mode'),
    (GroupPlan, 'planned', group(master=None), 'groups[g].master'),
    (GroupPlan, 'planned', group(master='m'), 'groups[g].master'),
    (GroupPlan, 'planned', group(peers='p1'), 'groups[g].peers'),
    (GroupPlan, 'planned', group(peers=[{'name': 'm'}]), 'groups[g].peers[0].name'),
    (GroupPlan, 'planned', group(vectors=0), 'groups[g].vectors'),
    (GroupPlan, 'planned', group(size='3M'), 'groups[g].size'),
    (GroupPlan, 'planned', group(size=HUGE), 'groups[g].size'),
    (GroupPlan, 'planned', group(migration_port=80), 'groups[g].migration_port'),
    (GroupPlan, 'planned', group(colour='red'), 'groups[0].colour'),
    (GroupPlan, 'planned', group(master={'name': 'm', 'memory': '1K'}), 'groups[g].master.memory'),
    (GroupPlan, 'planned', group(master={'name': 'm', 'user': 'qemu'}, peers=[{'name': 'p', 'user': 'qemu'}]),
     'groups[g].peers[0].user'),
    (GroupPlan, 'planned', dict(group(), facts='hv1'), 'facts'),
    (GroupPlan, 'planned', dict(group(), facts={'hv1': {'guests': {'m': 'running'}}}), 'facts.hv1.guests.m'),
    (GroupPlan, 'planned', dict(group(), facts={'hv1': {'moves': {'g': 'sending'}}}), 'facts.hv1.moves.g'),
    # plan's rollout placement
    (GroupPlan, 'planned', dict(rollout(), rollout=['hv1']), 'rollout'),
    (GroupPlan, 'planned', rollout(colour='red'), 'rollout.colour'),
    (GroupPlan, 'planned', rollout(batch='hv1'), 'rollout.batch'),
    (GroupPlan, 'planned', rollout(batch=['hv9']), 'rollout.batch[0]'),
    (GroupPlan, 'planned', rollout(batch=['hv1', 'hv1']), 'rollout.batch[1]'),
    (GroupPlan, 'planned', rollout(skip=['hv2']), 'rollout.skip[0]'),
    (GroupPlan, 'planned', rollout(destinations=[]), 'rollout.destinations'),
    (GroupPlan, 'planned', rollout(destinations='spares'), 'rollout.destinations'),
    (GroupPlan, 'planned', rollout(destinations=['hv1']), 'rollout.destinations[0]'),
    (GroupPlan, 'planned', rollout(destinations=['hv2', 'hv2']), 'rollout.destinations[1]'),
    (GroupPlan, 'planned', rollout(reserve='lots'), 'rollout.reserve'),
    (GroupPlan, 'planned', rollout(guest_overhead=-1), 'rollout.guest_overhead'),
    (GroupPlan, 'planned', rollout(capacity=['hv2']), 'rollout.capacity'),
    (GroupPlan, 'planned', rollout(capacity={'hv9': '1G'}), 'rollout.capacity.hv9'),
    (GroupPlan, 'planned', rollout(capacity={'hv2': True}), 'rollout.capacity.hv2'),
    (GroupPlan, 'planned', rollout(facts={}), 'facts.hv2.host_memory'),
    (GroupPlan, 'planned', rollout(facts={'hv2': {'host_memory': {'total': '1G', 'available': 1}}}),
     'facts.hv2.host_memory'),
    (GroupPlan, 'planned', rollout(capacity={'hv2': '16M'}), 'groups[g]'),
]


def host_state(root):
    """What a failed call must leave as it found: files under the runtime directory, units, /dev/shm."""
    files = sorted(os.path.join(d, f) for d, _dirs, names in os.walk(root) for f in names + _dirs)
    units = sorted(n for n in os.listdir('/etc/systemd/system') if n.startswith('ivshmem-fleet')) \
        if os.path.isdir('/etc/systemd/system') else []
    return files, units, sorted(os.listdir('/dev/shm'))


@pytest.mark.parametrize('manager, state, params, field', CASES,
                         ids=['%s-%s' % (c[0].__name__, c[3]) for c in CASES])
def test_bad_input_names_the_field_and_changes_nothing(tmp_path, manager, state, params, field):
    layout = Layout(str(tmp_path))
    before = host_state(str(tmp_path))
    with pytest.raises(ValidationError) as info:
        manager(params, layout, False).run(state)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(field + ': ')
    assert host_state(str(tmp_path)) == before


def test_at_least_forty_cases():
    assert len(CASES) >= 40


def test_info_reports_damaged_records_instead_of_failing(tmp_path):
    layout = Layout(str(tmp_path))
    for kind, name, text in (('guests', 'list', '[1, 2]'), ('guests', 'nospec', '{"pid": 1}'),
                             ('servers', 'deep', '[' * 5000), ('servers', 'list', '[]')):
        directory = os.path.join(str(tmp_path), kind, name)
        os.makedirs(directory)
        with open(os.path.join(directory, 'spec.json'), 'w') as handle:
            handle.write(text)
    facts = HostInfo({}, layout, False).run('gathered')['ansible_facts']['ivshmem_fleet']
    assert isinstance(facts['servers'], dict) and isinstance(facts['guests'], dict)


class _ScriptedQMP:
    """A UNIX socket that greets like QEMU and answers each command with the next scripted line."""

    def __init__(self, path, replies):
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(1)
        self.replies = list(replies)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _addr = self.listener.accept()
        conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
        reader = conn.makefile('rb')
        reader.readline()
        conn.sendall(b'{"return": {}, "id": 1}\n')  # qmp_capabilities
        for reply in self.replies:
            reader.readline()
            conn.sendall(reply + b'\n')
        reader.readline()
        conn.close()


def client_answered_with(tmp_path, reply):
    """A QMP client whose first command gets ``reply`` as QEMU's answer."""
    path = str(tmp_path / 'qmp.sock')
    _ScriptedQMP(path, [reply])
    return QMPClient(path, timeout=5)


@pytest.mark.parametrize('reply', [b'not json', b'[1, 2]', b'[' * 5000, b'"a string"',
                                   b'{"error": "no class", "id": 2}'])
def test_malformed_qmp_replies_are_qmp_errors(tmp_path, reply):
    with client_answered_with(tmp_path, reply) as qmp:
        with pytest.raises(QMPError):
            qmp.command('query-status')


@pytest.mark.parametrize('text', [b'{"return": "", "id": 2}', b'{"return": 7, "id": 2}',
                                  b'{"return": "0000000000000008: zz", "id": 2}'])
def test_unexpected_memory_reads_are_qmp_errors(tmp_path, text):
    with client_answered_with(tmp_path, text) as qmp:
        with pytest.raises(QMPError):
            read_word(qmp, 0x1000)
