"""The guest handle (_vm.GuestHandle) against a fake QEMU monitor on a UNIX socket: one
connection per ``qmp()`` block, the handle's calls on it, event times, quit, the timeouts."""
import json
import os
import re
import socket
import threading

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _readiness, _vm
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPError
from ansible_collections.ivshmem.fleet.plugins.module_utils._vm import EVENT_TIMEOUT, QMP_TIMEOUT, GuestHandle

STOP_AT = {'seconds': 1700000000, 'microseconds': 250000}
RESUME_AT = {'seconds': 1700000001, 'microseconds': 500000}
BAR0 = 0xfebf1000


class FakeQEMU:
    """A QMP monitor as QEMU serves one (``-qmp unix:...,server=on``: one client at a time):
    greeting, capabilities, then the commands the handle sends. ``stop`` and ``cont`` are
    followed by their STOP/RESUME events (unless ``events`` is False); ``quit`` ends it."""

    def __init__(self, path, events=True):
        self.path, self.events = path, events
        self.state = 'running'
        self.connections, self.commands = 0, []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _addr = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                try:
                    if not self._session(conn):
                        return
                except OSError:
                    pass  # the client left first (before the event after its command, say)

    def _session(self, conn):
        def send(message):
            conn.sendall(json.dumps(message).encode() + b'\n')

        send({'QMP': {'version': {}, 'capabilities': []}})
        for line in conn.makefile('rb'):
            request = json.loads(line)
            name = request['execute']
            self.commands.append((self.connections, name, request.get('arguments')))
            if name == 'quit':  # QEMU stops listening, then answers and exits
                self.listener.close()
                send({'return': {}, 'id': request['id']})
                return False
            answer, event = self._answer(name, request.get('arguments') or {})
            send({'return': answer, 'id': request['id']})
            if event is not None and self.events:
                send({'event': event[0], 'timestamp': event[1], 'data': {}})
        return True

    def _answer(self, name, arguments):
        if name == 'query-status':
            return {'status': self.state, 'running': self.state == 'running'}, None
        if name == 'stop':
            self.state = 'paused'
            return {}, ('STOP', STOP_AT)
        if name == 'cont':
            self.state = 'running'
            return {}, ('RESUME', RESUME_AT)
        if name == 'qom-get' and arguments['path'] == '/machine':
            return 'pc-i440fx-7.2-machine', None
        if name == 'qom-get':
            return arguments['path'].endswith('/ivshmem0'), None  # ivshmem0 is the master
        if name == 'query-pci':
            device = {'id': {'vendor': _vm.IVSHMEM_VENDOR, 'device': _vm.IVSHMEM_DEVICE}, 'qdev_id': 'ivshmem0',
                      'regions': [{'bar': 0, 'address': BAR0}, {'bar': 2, 'address': 0xfd000000, 'size': 1 << 20}]}
            return [{'devices': [device]}], None
        if name == 'human-monitor-command':
            return '%016x: 0x00000003\r\n' % (BAR0 + _vm.IVPOSITION_OFFSET), None
        return {}, None


@pytest.fixture
def guest(tmp_path):
    """(handle, fake QEMU) of guest ``g`` in a runtime directory under tmp_path."""
    handle = GuestHandle.of(Layout(str(tmp_path)), 'g')
    os.makedirs(handle.paths['dir'])
    return handle, FakeQEMU(handle.qmp_path)


def test_one_default_timeout_and_named_overrides(tmp_path):
    layout = Layout(str(tmp_path))
    assert GuestHandle.of(layout, 'g').timeout == QMP_TIMEOUT == 30.0
    assert GuestHandle.of(layout, 'g', timeout=5.0).timeout == 5.0
    assert GuestHandle(layout.guest_paths('g')).paths == layout.guest_paths('g')
    assert EVENT_TIMEOUT == 5.0


def test_calls_inside_a_block_share_its_connection(guest):
    vm, qemu = guest
    with vm.qmp() as qmp:
        assert qmp.timeout == QMP_TIMEOUT
        with vm.qmp() as again:
            assert again is qmp
        vm.stop()
        assert vm.status() == 'paused'
        vm.cont()
        assert vm.machine_type() == 'pc-i440fx-7.2'
    assert qemu.connections == 1
    assert [name for _conn, name, _args in qemu.commands] == [
        'qmp_capabilities', 'stop', 'query-status', 'cont', 'qom-get']


def test_calls_outside_a_block_open_their_own(guest):
    vm, qemu = guest
    assert vm.status() == 'running'
    vm.stop()
    assert vm.status() == 'paused'
    assert qemu.connections == 3


def test_a_block_may_ask_for_its_own_timeout(guest):
    vm, _qemu = guest
    with vm.qmp(timeout=2.0) as qmp:
        assert qmp.timeout == 2.0
    with vm.qmp() as qmp:
        assert qmp.timeout == QMP_TIMEOUT


def test_event_times_are_qemus_stamps(guest):
    vm, _qemu = guest
    with vm.qmp():
        vm.stop()
        assert vm.event_time('STOP') == 1700000000.25
        vm.cont()
        assert vm.event_time('RESUME') == 1700000001.5


def test_an_event_that_does_not_come_has_no_time(tmp_path):
    vm = GuestHandle.of(Layout(str(tmp_path)), 'g')
    os.makedirs(vm.paths['dir'])
    FakeQEMU(vm.qmp_path, events=False)
    with vm.qmp():
        vm.stop()
        assert vm.event_time('STOP', timeout=0.2) is None


def test_an_event_is_awaited_only_on_an_open_connection(guest):
    vm, _qemu = guest
    vm.stop()
    with pytest.raises(RuntimeError):
        vm.event_time('STOP')


def test_ivshmem_state_from_outside(guest):
    vm, _qemu = guest
    with vm.qmp():
        registers = vm.ivshmem_registers()
        assert registers == {'ivshmem0': {'bar0': BAR0, 'bar2': 0xfd000000, 'bar2_size': 1 << 20, 'ivposition': 3}}
        assert vm.device_role('ivshmem0') == 'master'
        assert vm.device_role('ivshmem1') == 'peer'


def test_quit_asks_qemu_then_signals(guest, monkeypatch):
    vm, qemu = guest
    terminated = []
    monkeypatch.setattr(_vm, 'running_pid', lambda paths, uid, held=None: 4242)
    monkeypatch.setattr(_vm._host, 'terminate', lambda pid, marker, timeout, uid=None: terminated.append(
        (pid, marker, timeout)) or 0.5)
    assert vm.quit(20) == 0.5
    assert qemu.commands[-1][1] == 'quit'
    assert terminated == [(4242, vm.qmp_path, 20)]
    qemu.thread.join(5)
    assert not os.path.exists(vm.qmp_path)  # nobody listens on it any more: removed


def test_quit_of_a_qemu_qmp_cannot_reach_still_signals(tmp_path, monkeypatch):
    vm = GuestHandle.of(Layout(str(tmp_path)), 'g')
    terminated = []
    monkeypatch.setattr(_vm, 'running_pid', lambda paths, uid, held=None: 4242)
    monkeypatch.setattr(_vm._host, 'terminate', lambda pid, marker, timeout, uid=None: terminated.append(pid) or 1.0)
    assert vm.quit(20) == 1.0
    assert terminated == [4242]


def test_quit_of_a_guest_not_running_waits_for_nothing(guest):
    vm, qemu = guest
    assert vm.quit(20) == 0.0  # no record, so no account: no process of it
    assert qemu.connections == 0


def test_readiness_names_the_qmp_socket_and_probes_through_the_handle(guest):
    vm, qemu = guest
    assert _readiness.wait('qmp_answers', 5, vm)[0]['status'] == 'running'
    assert _readiness.wait('bars_assigned', 5, vm)[0]['ivshmem0']['ivposition'] == 3
    assert _readiness.CONDITIONS['qmp_answers'][0].format(vm) == 'QEMU to answer QMP on %s' % vm.qmp_path
    assert qemu.connections == 2


def test_connection_errors_are_qmp_errors(tmp_path):
    vm = GuestHandle.of(Layout(str(tmp_path)), 'g')
    with pytest.raises(QMPError):
        vm.status()


def test_only_the_handle_opens_qmp():
    """Every QMP use of the collection's host code goes through _vm.GuestHandle."""
    plugins = os.path.join(os.path.dirname(_vm.__file__), '..')
    opened = []
    for directory, _dirs, files in os.walk(plugins):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(directory, name)
                with open(path) as handle:
                    if re.search(r'\bQMPClient\(', handle.read()):
                        opened.append(os.path.relpath(path, plugins))
    assert opened == ['module_utils/_vm.py']
