"""ivshmem.fleet.host on real QEMU: one call converges a host's servers and guests, masters
first whatever the order given, gated on IDs; check mode predicts; a second call changes
nothing."""
import os

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import GuestError
from ansible_collections.ivshmem.fleet.plugins.module_utils._host_converge import HostConverger, GateError
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import server_status


def devices(role):
    return [{'server': 'g', 'role': role, 'vectors': 2}]


def desired(lab, pins=True):
    server = {'name': 'g', 'size': '4M', 'vectors': 2, 'timeout': 20, 'shm_name': 't-%s-g' % lab.tag,
              'program_dir': os.path.join(lab.root, 'program')}
    if pins:
        server['pins'] = {'g-master': 0, 'g-peer1': 1, 'g-peer2': 2}
    guests = [{'name': name, 'memory': '64M', 'accel': 'tcg', 'timeout': 60, 'ivshmem': devices(role)}
              for name, role in (('g-peer2', 'peer'), ('g-master', 'master'), ('g-peer1', 'peer'))]
    lab.servers.append('g')
    lab.guests.extend(guest['name'] for guest in guests)
    return {'servers': [server], 'guests': guests}


def converge(lab, params, check_mode=False):
    return HostConverger(params, lab.layout, check_mode).run('present')


def test_one_call_converges_the_host_master_first_and_a_second_changes_nothing(builtin_lab):
    params = desired(builtin_lab)
    predicted = converge(builtin_lab, params, check_mode=True)
    assert predicted['changed'] and not os.path.exists(os.path.join(builtin_lab.root, 'servers', 'g'))
    assert sorted(predicted['diff']['after']['guests']) == ['g-master', 'g-peer1', 'g-peer2']
    done = converge(builtin_lab, params)
    assert done['changed'] and done['qemu_binary'] == '/usr/bin/qemu-system-x86_64'
    ids = dict((name, guest['ivshmem'][0]['server_id']) for name, guest in done['guests'].items())
    assert ids == {'g-master': 0, 'g-peer1': 1, 'g-peer2': 2}
    # Master first although listed second: it was admitted first (the server's oldest client).
    clients = sorted(server_status(builtin_lab.layout, 'g')['clients'], key=lambda client: client['connected_at'])
    assert clients[0]['name'] == 'g-master', clients
    assert not converge(builtin_lab, params, check_mode=True)['changed']
    assert not converge(builtin_lab, params)['changed']


def test_a_peer_without_the_id_the_group_pins_stops_the_call(builtin_lab):
    """The running server was started with other pins (it is not restarted for them), and a
    stray took ID 1: g-peer1 gets another ID, which the gate catches."""
    params = desired(builtin_lab)
    params['servers'][0]['pins'] = {'g-master': 0, 'g-peer2': 2}
    # It admits the stray's account too (a server admits only the guests it knows).
    params['servers'][0]['admit'] = ['g-master', 'g-peer1', 'g-peer2', 'stray']
    converge(builtin_lab, {'servers': params['servers'], 'guests': []})
    builtin_lab.guest('stray', 'g')  # ID 1: the first one no pin reserves
    params['servers'][0]['pins'] = {'g-master': 0, 'g-peer1': 1, 'g-peer2': 2}
    with pytest.raises(GateError) as failed:
        converge(builtin_lab, params)
    assert 'guests[2].ivshmem[0]: g-peer1 has ID 3 on server g, not 1' in str(failed.value), failed.value


def test_a_master_that_cannot_get_id_0_fails_the_call_before_its_peers(builtin_lab):
    params = desired(builtin_lab, pins=False)
    builtin_lab.server('g', size='4M', shm_name='t-%s-g' % builtin_lab.tag)
    builtin_lab.guest('stray', 'g')  # takes ID 0 first
    with pytest.raises(GuestError) as failed:
        converge(builtin_lab, params)
    # QEMU itself refuses a master that is not the server's first client.
    assert 'g-master did not start' in str(failed.value) and 'master must connect' in str(failed.value)
    assert builtin_lab.status('g-peer1') is None and builtin_lab.status('g-peer2') is None


def test_the_call_says_when_qemu_is_missing(tmp_path, monkeypatch):
    """The hypervisor role installs QEMU on what this says, with no call of its own to look."""
    from ansible_collections.ivshmem.fleet.plugins.module_utils import _host_converge
    from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout
    monkeypatch.setattr(_host_converge, 'DEFAULT_QEMU', str(tmp_path / 'no-qemu-here'))
    result = HostConverger({}, Layout(str(tmp_path / 'runtime')), True).run('present')
    assert result['qemu_binary'] is None and result['changed']


@pytest.mark.parametrize('mode, owner', [(0o1777, 0), (0o775, 0), (0o755, 65534)],
                         ids=['sticky world-writable, as /tmp', 'group-writable', "another account's"])
def test_a_runtime_dir_that_is_not_the_collection_s_is_refused_never_re_owned(tmp_path, mode, owner):
    from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
    from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout
    path = tmp_path / 'shared'
    path.mkdir()
    os.chown(str(path), owner, 0)
    os.chmod(str(path), mode)
    for check_mode in (True, False):
        with pytest.raises(ValidationError) as info:
            HostConverger({}, Layout(str(path)), check_mode).run('present')
        assert info.value.field == 'runtime_dir' and 'is not the collection\'s' in str(info.value), info.value
    found = os.stat(str(path))
    assert (found.st_uid, found.st_mode & 0o7777) == (owner, mode)
    assert os.listdir(str(path)) == []
