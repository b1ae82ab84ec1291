import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import (
    GuestSpec, Layout, ServerSpec, guest_account, server_account)
from ansible_collections.ivshmem.fleet.plugins.module_utils._sizes import parse_size, round_up_power_of_two

LAYOUT = Layout('/run/x')


def field_of(builder, *args):
    with pytest.raises(ValidationError) as info:
        builder(*args)
    return info.value.field


@pytest.mark.parametrize('text,value', [('4M', 4 << 20), ('1048576', 1 << 20), ('2G', 2 << 30), ('1.5K', 1536), ('8k', 8192)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize('text', ['abc', '-1', '1Q', '1.5', '0'])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_round_up_like_upstream():
    assert round_up_power_of_two(3 << 20) == 4 << 20
    assert round_up_power_of_two(4 << 20) == 4 << 20


@pytest.mark.parametrize('params,field', [
    ({'name': '../x'}, 'name'),
    ({'name': 'a;rm'}, 'name'),
    ({'name': 'a', 'size': '3M'}, 'size'),
    ({'name': 'a', 'size': '1K'}, 'size'),
    ({'name': 'a', 'vectors': 65}, 'vectors'),
    ({'name': 'a', 'vectors': 0}, 'vectors'),
    ({'name': 'a', 'implementation': 'qemu', 'binary': '/bin/s', 'size': '2G'}, 'size'),
    ({'name': 'a', 'implementation': 'qemu'}, 'binary'),
    ({'name': 'a', 'implementation': 'qemu', 'binary': '/bin/s', 'pins': {'g': 0}}, 'pins'),
    ({'name': 'a', 'pins': {'g': 0, 'h': 0}}, 'pins.h'),
    ({'name': 'a', 'pins': {'g': 70000}}, 'pins.g'),
    ({'name': 'a', 'socket_mode': 'rw'}, 'socket_mode'),
    ({'name': 'a', 'user': 'root'}, 'user'),
    ({'name': 'a', 'group': 'disk'}, 'group'),
    ({'name': 'a\n'}, 'name'),  # $ would match before the newline
    ({'name': 'a', 'socket_mode': 660}, 'socket_mode'),  # unquoted 660 is decimal (0o1224)
    ({'name': 'a', 'memory_mode': 600}, 'memory_mode'),
    ({'name': 'a', 'memory_mode': True}, 'memory_mode'),
    ({'name': 'a', 'memory_mode': '0o640'}, 'memory_mode'),
    ({'name': 'a', 'memory_mode': '1777'}, 'memory_mode'),
    ({'name': 'a', 'max_clients': 0}, 'max_clients'),
    ({'name': 'a', 'max_clients': True}, 'max_clients'),
    ({'name': 'a', 'memory_dir': 'relative'}, 'memory_dir'),
])
def test_server_spec_errors_name_the_field(params, field):
    assert field_of(ServerSpec, params) == field


def test_builtin_server_argv():
    spec = ServerSpec({'name': 'g1', 'size': '2G', 'vectors': 4, 'pins': {'m': 0}, 'hold': 'm'})
    assert spec.guest_accounts() == {'m': 'ivg-m'} and (spec.user, spec.group) == ('ivs-g1', 'ivshmem')
    argv = spec.argv(LAYOUT, '/usr/bin/python3', '/p.pyz', foreground=False, uids={'m': 1234})
    assert argv[:2] == ['/usr/bin/python3', '/p.pyz'] and '-F' not in argv
    assert argv[argv.index('-l') + 1] == str(2 << 30)
    assert argv[argv.index('-S') + 1] == '/run/x/servers/g1/ivshmem.sock'
    assert argv[argv.index('--pin') + 1] == 'm=0' and argv[argv.index('--hold') + 1] == 'm'
    assert argv[argv.index('--account') + 1] == 'm=1234' and '--admit-accounts-only' in argv
    assert spec.memory_path() == '/dev/shm/ivshmem-fleet-g1'


@pytest.mark.parametrize('params, closed', [
    ({}, True), ({'admit': ['p']}, True), ({'admit_any': True}, False),
])
def test_a_builtin_server_admits_only_the_accounts_it_knows_unless_told_otherwise(params, closed):
    argv = ServerSpec(dict(params, name='g1')).argv(LAYOUT, '/usr/bin/python3', '/p.pyz', foreground=False)
    assert ('--admit-accounts-only' in argv) is closed
    assert ServerSpec(dict(params, name='g1')).to_dict().get('admit_any', False) is not closed


def test_upstream_server_argv_is_upstream_options_only():
    spec = ServerSpec({'name': 'g1', 'implementation': 'qemu', 'binary': '/opt/ivshmem-server', 'size': '1M'})
    argv = spec.argv(LAYOUT, '/usr/bin/python3', None, foreground=True)
    assert argv[0] == '/opt/ivshmem-server'
    assert set(a for a in argv[1:] if a.startswith('-')) == {'-F', '-S', '-M', '-l', '-n', '-p'}


def guest(**params):
    return GuestSpec(dict({'name': 'vm1'}, **params), LAYOUT)


@pytest.mark.parametrize('params,field', [
    ({'name': 'a b'}, 'name'),
    ({'accel': 'hvf'}, 'accel'),
    ({'ivshmem': [{'role': 'boss', 'server': 's'}]}, 'ivshmem[0].role'),
    ({'ivshmem': [{'server': 's', 'vectors': 99}]}, 'ivshmem[0].vectors'),
    ({'ivshmem': [{}]}, 'ivshmem[0]'),
    ({'ivshmem': [{'type': 'plain', 'memory_path': '/dev/shm/x', 'size': '3M'}]}, 'ivshmem[0].size'),
    ({'ivshmem': [{'server': 's', 'role': 'master'}, {'server': 's'}]}, 'ivshmem[1]'),
    ({'disks': [{'path': 'rel.qcow2'}]}, 'disks[0].path'),
    ({'initrd': '/boot/initrd'}, 'kernel'),
    ({'memory': '1K'}, 'memory'),
    ({'user': 'root'}, 'user'),   # a guest escape would be root
    ({'group': 'disk'}, 'group'),  # ... or read and write the host's disks
    ({'user': 'qemu', 'group': 'shadow'}, 'group'),
    ({'name': 'vm1\n'}, 'name'),
])
def test_guest_spec_errors_name_the_field(params, field):
    assert field_of(lambda: guest(**params)) == field


def test_guest_argv_has_devices_sandbox_and_incoming():
    spec = guest(memory='256M', ivshmem=[{'server': 'g1', 'role': 'master', 'vectors': 2},
                                         {'type': 'plain', 'memory_path': '/dev/shm/a,b', 'size': '1M'}])
    argv = spec.argv(LAYOUT, 'tcg', incoming=True)
    line = ' '.join(argv)
    assert '-name vm1' in line and '-m 256' in line and 'tcg,tb-size=64' in line
    assert 'ivshmem-doorbell,id=ivshmem0,chardev=ivshmem0-chr,vectors=2,master=on' in line
    assert 'path=/run/x/servers/g1/ivshmem.sock' in line
    assert 'mem-path=/dev/shm/a,,b' in line  # commas escaped for QEMU
    assert 'ivshmem-plain,id=ivshmem1,memdev=ivshmem1-mem,master=off' in line
    assert argv[-3:] == ['-incoming', 'defer', '-S']
    assert 'spawn=deny' in line
    assert spec.masters[0].memory_key == ('server', '/run/x/servers/g1/ivshmem.sock')


@pytest.mark.parametrize('given, mode', [
    ('0660', 0o660), ('660', 0o660), (' 0640 ', 0o640), (384, 0o600),  # 384: YAML's reading of 0600
    (0o600, 0o600), (0, 0), (0o750, 0o750),
])
def test_modes_are_quoted_octal_or_the_mode_itself_never_reinterpreted(given, mode):
    spec = ServerSpec({'name': 'a', 'socket_mode': given, 'memory_mode': given})
    assert (spec.socket_mode, spec.memory_mode) == (mode, mode)
    assert spec.to_dict()['socket_mode'] == '%04o' % mode


def test_an_unquoted_decimal_mode_is_refused_with_the_fix():
    with pytest.raises(ValidationError) as info:
        ServerSpec({'name': 'a', 'memory_mode': 640})
    assert info.value.field == 'memory_mode' and "'0640'" in str(info.value)


@pytest.mark.parametrize('given, readings', [
    (444, ('0674', '0444')),   # typed 444: the number 444 is the mode 0674
    (500, ('0764', '0500')),
    (432, ('0660', '0432')),   # YAML's reading of an unquoted 0660, or 432 typed
])
def test_a_number_whose_digits_are_octal_is_ambiguous_and_refused(given, readings):
    with pytest.raises(ValidationError) as info:
        ServerSpec({'name': 'a', 'socket_mode': given})
    assert info.value.field == 'socket_mode'
    assert 'ambiguous' in str(info.value) and 'quote the mode' in str(info.value)
    assert all(reading in str(info.value) for reading in readings), info.value


@pytest.mark.parametrize('machine,kept,bus', [
    ('pc', [], ',addr=0x10,bus=pci.0'),
    ('pc-i440fx-7.2', [], ',addr=0x10,bus=pci.0'),
    ('q35', ['-device', 'pcie-root-port,id=ivshmem0-port,chassis=16,bus=pcie.0,addr=0x10'], ',bus=ivshmem0-port'),
])
def test_a_hotplug_device_has_a_fixed_place_that_stays_when_it_is_unplugged(machine, kept, bus):
    spec = GuestSpec({'name': 'p', 'machine': machine, 'ivshmem': [{'server': 's', 'vectors': 2, 'hotplug': True}]}, LAYOUT)
    plugged = spec.argv(LAYOUT, 'tcg', False)
    assert plugged[-2:] == ['-device', 'ivshmem-doorbell,id=ivshmem0,chardev=ivshmem0-chr,vectors=2,master=off' + bus]
    unplugged = spec.argv(LAYOUT, 'tcg', True, unplugged=['ivshmem0'])
    assert not [a for a in unplugged if 'ivshmem-doorbell' in a or 'ivshmem0-chr' in a]
    assert [a for a in unplugged if 'pcie-root-port' in a] == kept[1:]
    chardev, device = spec.devices[0].qmp_plug(machine)
    assert chardev['backend']['data']['addr']['data']['path'] == LAYOUT.server_socket('s')
    assert ','.join('%s=%s' % (k, v) for k, v in sorted(device.items()) if k in ('addr', 'bus')) in bus


PLAIN = {'type': 'plain', 'memory_path': '/dev/shm/r,1', 'size': '4M'}
PLAIN_BACKEND = 'memory-backend-file,id=ivshmem0-mem,mem-path=/dev/shm/r,,1,size=4194304,share=on'


@pytest.mark.parametrize('machine,kept,bus', [
    ('pc', [], ',addr=0x10,bus=pci.0'),
    ('q35', ['-device', 'pcie-root-port,id=ivshmem0-port,chassis=16,bus=pcie.0,addr=0x10'], ',bus=ivshmem0-port'),
])
def test_a_plain_hotplug_device_is_its_memory_backend_and_the_device_both_plugged_at_its_fixed_place(machine, kept, bus):
    spec = GuestSpec({'name': 'p', 'machine': machine, 'ivshmem': [dict(PLAIN, hotplug=True)]}, LAYOUT)
    assert spec.devices[0].argv(machine) == kept + [
        '-object', PLAIN_BACKEND, '-device', 'ivshmem-plain,id=ivshmem0,memdev=ivshmem0-mem,master=off' + bus]
    # Unplugged: the placement only, no backend (a backend left without its device is migrated
    # as a RAM block of its own, which a destination without it refuses).
    assert spec.devices[0].argv(machine, plugged=False) == kept
    unplugged = spec.argv(LAYOUT, 'tcg', True, unplugged=['ivshmem0'])
    assert not [a for a in unplugged if 'ivshmem-plain' in a or 'ivshmem0-mem' in a]
    # The RAM's own backend stays, made before any other (QEMU 10.0's TCG dirty sync, see argv).
    assert unplugged[unplugged.index('-object') + 1] == 'memory-backend-ram,id=pc.ram,size=128M'
    assert unplugged[unplugged.index('-machine') + 1] == machine + ',memory-backend=pc.ram'
    backend, device = spec.devices[0].qmp_plug(machine)
    # The same object as on the command line (its path unescaped: QMP takes it as it is).
    assert backend == {'qom-type': 'memory-backend-file', 'id': 'ivshmem0-mem', 'mem-path': '/dev/shm/r,1',
                       'size': 4 << 20, 'share': True}
    assert ','.join('%s=%s' % (k, v) for k, v in sorted(device.items()) if k in ('addr', 'bus')) in bus
    assert dict((k, v) for k, v in device.items() if k not in ('addr', 'bus')) == {
        'driver': 'ivshmem-plain', 'id': 'ivshmem0', 'memdev': 'ivshmem0-mem', 'master': 'off'}
    assert spec.to_dict()['ivshmem'][0]['hotplug'] is True
    master = GuestSpec({'name': 'm', 'machine': machine, 'ivshmem': [dict(PLAIN, role='master', hotplug=True)]}, LAYOUT)
    assert master.devices[0].qmp_plug(machine)[1]['master'] == 'on'


def test_a_guest_with_a_plain_device_makes_its_ram_s_backend_first_and_others_keep_their_command_line():
    argv = GuestSpec({'name': 'p', 'memory': '64M', 'ivshmem': [PLAIN]}, LAYOUT).argv(LAYOUT, 'tcg', False)
    objects = [argv[i + 1] for i, arg in enumerate(argv) if arg == '-object']
    assert objects == ['memory-backend-ram,id=pc.ram,size=64M', PLAIN_BACKEND]
    assert argv[argv.index('-machine') + 1] == 'pc,memory-backend=pc.ram' and argv[argv.index('-m') + 1] == '64'
    doorbell = GuestSpec({'name': 'd', 'ivshmem': [{'server': 's'}]}, LAYOUT).argv(LAYOUT, 'tcg', False)
    assert '-object' not in doorbell and doorbell[doorbell.index('-machine') + 1] == 'pc'


def test_without_hotplug_the_command_line_and_record_are_as_before():
    spec = GuestSpec({'name': 'p', 'ivshmem': [{'server': 's', 'vectors': 2}]}, LAYOUT)
    assert spec.argv(LAYOUT, 'tcg', False)[-1] == 'ivshmem-doorbell,id=ivshmem0,chardev=ivshmem0-chr,vectors=2,master=off'
    assert 'hotplug' not in spec.to_dict()['ivshmem'][0]
    plain = GuestSpec({'name': 'p', 'ivshmem': [PLAIN]}, LAYOUT)
    assert plain.argv(LAYOUT, 'tcg', False)[-4:] == [
        '-object', PLAIN_BACKEND, '-device', 'ivshmem-plain,id=ivshmem0,memdev=ivshmem0-mem,master=off']
    assert 'hotplug' not in plain.to_dict()['ivshmem'][0]


@pytest.mark.parametrize('device,field', [
    ({'server': 's', 'hotplug': 'yes'}, 'ivshmem[0].hotplug'),
    (dict(PLAIN, hotplug='yes'), 'ivshmem[0].hotplug'),
])
def test_hotplug_bad_input_names_the_field(device, field):
    assert field_of(GuestSpec, {'name': 'p', 'ivshmem': [device]}, LAYOUT) == field


@pytest.mark.parametrize('machine', ['microvm', 'virt'])
@pytest.mark.parametrize('device', [{'server': 's'}, PLAIN])
def test_hotplug_is_refused_on_machines_without_a_placement(machine, device):
    spec = {'name': 'p', 'machine': machine, 'ivshmem': [dict(device, hotplug=True)]}
    assert field_of(GuestSpec, spec, LAYOUT) == 'ivshmem[0].hotplug'


def test_accounts_are_each_guests_own_and_valid_system_names():
    assert [guest_account('g1-master'), server_account('g1')] == ['ivg-g1-master', 'ivs-g1']
    long_name, upper = guest_account('x' * 64), guest_account('DB.Master')
    assert len(long_name) <= 31 and long_name.startswith('ivg-xxx') and long_name != guest_account('x' * 63)
    assert upper.startswith('ivg-db_master-') and upper != guest_account('db_master')
    assert GuestSpec({'name': 'm'}, LAYOUT).user == 'ivg-m'
    assert (GuestSpec({'name': 'm', 'user': 'qemu'}, LAYOUT).group) == 'qemu'


def test_two_guests_a_server_knows_under_one_account_are_refused():
    with pytest.raises(ValidationError) as info:
        ServerSpec({'name': 's', 'pins': {'a': 0, 'b': 1}, 'accounts': {'a': 'qemu', 'b': 'qemu'}})
    assert info.value.field == 'accounts.b'


def test_a_record_from_before_an_option_existed_is_the_same_guest_until_the_option_is_given(monkeypatch):
    """A new guest option is its declaration, its documentation and its command line: checked by
    its declared type, and a guest that started before it (its record lacks the field) does not
    drift until the option is set."""
    from ansible_collections.ivshmem.fleet.plugins.module_utils import _model, _options
    declared = dict(_options.GUEST_ARGS, hugepages_demo=dict(type='bool', default=False))
    monkeypatch.setattr(_model, 'GUEST_ARGS', declared)
    monkeypatch.setattr(_model, 'GUEST_DEFAULTS', _options.defaults(declared))
    monkeypatch.setattr(GuestSpec, 'FIELDS', _options.GUEST_FIELDS + ('hugepages_demo',))
    before = guest().to_dict()
    del before['hugepages_demo']
    assert not guest().differs_from(before)
    assert guest(hugepages_demo=True).differs_from(before)
    assert field_of(lambda: guest(hugepages_demo='perhaps')) == 'hugepages_demo'
    assert guest(hugepages_demo='yes').hugepages_demo is True  # as Ansible converts it


def test_an_alias_is_the_machine_it_resolved_to_and_other_settings_drift():
    recorded = guest().to_dict()  # machine pc
    assert not guest(machine='pc-i440fx-7.2').differs_from(recorded, 'pc-i440fx-7.2')
    assert guest(machine='pc-i440fx-8.0').differs_from(recorded, 'pc-i440fx-7.2')
    assert guest(memory='256M').differs_from(recorded, 'pc-i440fx-7.2')


def test_a_cpu_model_goes_on_the_command_line_only_when_given():
    assert '-cpu Haswell-v4,-hle' in ' '.join(guest(cpu='Haswell-v4,-hle').argv(LAYOUT, 'tcg', incoming=False))
    assert '-cpu' not in guest().argv(LAYOUT, 'tcg', incoming=False)
    assert field_of(lambda: guest(cpu=['Haswell'])) == 'cpu'
