"""Every runtime path, as written out by hand: a path that changes fails here (a host upgraded in
place would no longer find its servers, guests and moves), and nothing in the layout touches the disk."""

import builtins
import os

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _guest, _migration, _qemu_binary, _server, _tls
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._host import check_trusted_path
from ansible_collections.ivshmem.fleet.plugins.module_utils._layout import Layout
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import GuestSpec, ServerSpec

# The paths as the collection wrote them before there was a _layout.py.
SERVER = {
    'dir': '/run/ivshmem-fleet/servers/g1',
    'socket': '/run/ivshmem-fleet/servers/g1/ivshmem.sock',
    'control': '/run/ivshmem-fleet/servers/g1/control.sock',
    'pidfile': '/run/ivshmem-fleet/servers/g1/server.pid',
    'log': '/run/ivshmem-fleet/servers/g1/server.log',
    'record': '/run/ivshmem-fleet/servers/g1/spec.json',
    'held': '/run/ivshmem-fleet/servers/g1/process.json',
}
GUEST = {
    'dir': '/run/ivshmem-fleet/guests/db-master',
    'qmp': '/run/ivshmem-fleet/guests/db-master/qmp.sock',
    'pidfile': '/run/ivshmem-fleet/guests/db-master/qemu.pid',
    'log': '/run/ivshmem-fleet/guests/db-master/qemu.log',
    'console': '/run/ivshmem-fleet/guests/db-master/console.log',
    'record': '/run/ivshmem-fleet/guests/db-master/spec.json',
}


def test_server_paths():
    layout = Layout()
    assert layout.runtime_dir == '/run/ivshmem-fleet'
    assert layout.server_paths('g1') == SERVER
    assert _server.server_paths(layout, 'g1') == SERVER
    assert layout.server_dir('g1') == SERVER['dir']
    assert layout.server_socket('g1') == SERVER['socket']
    assert layout.server_control('g1') == SERVER['control']
    assert layout.server_pidfile('g1') == SERVER['pidfile']
    assert layout.server_record('g1') == SERVER['record']


def test_guest_paths():
    layout = Layout()
    assert layout.guest_paths('db-master') == GUEST
    assert _guest.guest_paths(layout, 'db-master') == GUEST
    assert layout.guest_dir('db-master') == GUEST['dir']
    assert layout.guest_qmp('db-master') == GUEST['qmp']
    assert layout.guest_console('db-master') == GUEST['console']
    assert layout.incoming_uri('db-master-b') == 'unix:/run/ivshmem-fleet/guests/db-master-b/incoming.sock'
    assert layout.guest_migration('db-master') == '/run/ivshmem-fleet/guests/db-master/migration.json'


def test_host_wide_paths():
    layout = Layout()
    assert layout.kind_dir('servers') == '/run/ivshmem-fleet/servers'
    assert layout.kind_dir('guests') == '/run/ivshmem-fleet/guests'
    assert layout.moves_dir() == layout.kind_dir('moves') == '/run/ivshmem-fleet/moves'
    assert layout.move_record('g1') == '/run/ivshmem-fleet/moves/g1.json'
    assert layout.move_lock() == '/run/ivshmem-fleet/moves/.lock'
    assert layout.qemu_cache() == '/run/ivshmem-fleet/qemu'
    assert _qemu_binary.cache_dir(layout) == '/run/ivshmem-fleet/qemu'
    assert _qemu_binary.cache_dir(layout, check_mode=True) is None
    assert layout.tls_handover() == '/run/ivshmem-fleet/tls-handover'
    assert _tls.for_guest({}, 'ivshmem-g-a', layout.runtime_dir)['handover_dir'] == '/run/ivshmem-fleet/tls-handover'
    assert Layout.program('/usr/local/lib/ivshmem-fleet') == '/usr/local/lib/ivshmem-fleet/ivshmem-fleet-server.pyz'
    with pytest.raises(ValueError):
        layout.kind_dir('qemu')


def test_memory_paths():
    assert Layout.server_memory('ivshmem-fleet-g1') == '/dev/shm/ivshmem-fleet-g1'
    assert Layout.server_memory('m', '/dev/hugepages') == '/dev/hugepages/m'
    assert ServerSpec({'name': 'g1'}).memory_path() == '/dev/shm/ivshmem-fleet-g1'
    assert ServerSpec({'name': 'g1', 'memory_dir': '/dev/hugepages/'}).memory_path() == '/dev/hugepages/ivshmem-fleet-g1'
    assert ServerSpec({'name': 'g1', 'implementation': 'qemu', 'binary': '/usr/bin/ivshmem-server',
                       'memory_dir': '/dev/hugepages'}).memory_path() is None


def test_command_lines_use_the_layout():
    layout = Layout('/run/x/')
    assert layout.runtime_dir == '/run/x'
    argv = ServerSpec({'name': 'g1'}).argv(layout, '/usr/bin/python3', '/p/ivshmem-fleet-server.pyz', False)
    assert argv[argv.index('-S') + 1] == '/run/x/servers/g1/ivshmem.sock'
    assert argv[argv.index('-p') + 1] == '/run/x/servers/g1/server.pid'
    assert argv[argv.index('--control') + 1] == '/run/x/servers/g1/control.sock'
    argv = GuestSpec({'name': 'db-master'}, layout).argv(layout, 'tcg', False)
    assert argv[argv.index('-qmp') + 1] == 'unix:/run/x/guests/db-master/qmp.sock,server=on,wait=off'
    assert argv[argv.index('-serial') + 1] == 'file:/run/x/guests/db-master/console.log'


def test_migration_reads_the_server_record(monkeypatch):
    read = []
    monkeypatch.setattr(_migration._host, 'read_json', lambda path: read.append(path) or {'memory_path': '/dev/shm/m'})
    assert _migration.memory_path_of(Layout(), {'type': 'doorbell', 'server': 'g1'}) == '/dev/shm/m'
    assert read == [SERVER['record']]


def test_runtime_dir_is_checked():
    for bad in ('run/x', '', None, '/run/x\n'):
        with pytest.raises(ValidationError) as info:
            Layout(bad)
        assert info.value.field == 'runtime_dir'


def test_no_io(monkeypatch):
    """Building every path touches nothing: each call that could read or write the disk fails."""
    def refuse(*args, **kwargs):
        raise AssertionError('I/O in the layout: %r' % (args,))
    for name in ('listdir', 'stat', 'lstat', 'open', 'mkdir', 'makedirs', 'scandir', 'readlink', 'access', 'chmod'):
        monkeypatch.setattr(os, name, refuse)
    monkeypatch.setattr(builtins, 'open', refuse)
    layout = Layout('/srv/fleet')
    for method in ('server_paths', 'guest_paths', 'guest_migration', 'incoming_uri', 'move_record', 'server_record'):
        getattr(layout, method)('n')
    layout.moves_dir(), layout.move_lock(), layout.qemu_cache(), layout.tls_handover()
    Layout.server_memory('m'), Layout.program('/p')


def test_root_makes_files_only_where_no_other_account_can_redirect_the_path(tmp_path):
    check_trusted_path('memory_dir', '/dev/shm')  # others write there, but it is sticky
    check_trusted_path('memory_dir', str(tmp_path / 'not' / 'made' / 'yet'))
    open_dir = tmp_path / 'open'
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(ValidationError, match='writable by others \\(mode 0777\\) and not sticky'):
        check_trusted_path('memory_dir', str(open_dir / 'regions'))
    theirs = tmp_path / 'theirs'
    theirs.mkdir()
    os.chown(str(theirs), 65534, 65534)
    with pytest.raises(ValidationError, match='another account\'s \\(uid 65534\\)'):
        check_trusted_path('memory_dir', str(theirs))
    link = tmp_path / 'link'
    link.symlink_to(open_dir)
    os.lchown(str(link), 65534, 65534)  # a link of another account is not followed
    with pytest.raises(ValidationError) as info:
        check_trusted_path('memory_dir', str(link / 'x'))
    assert info.value.field == 'memory_dir' and 'not a directory' in str(info.value)
