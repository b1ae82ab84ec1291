"""Unplugging and plugging back a device over QMP (_hotplug.py) against a monitor kept in memory:
what is removed and added, and in which order, for a doorbell and a plain device."""
import contextlib

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _hotplug
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import GuestSpec, Layout
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPError

LAYOUT = Layout('/run/x')
DEVICES = {'doorbell': {'server': 's', 'vectors': 2}, 'plain': {'type': 'plain', 'memory_path': '/dev/shm/r', 'size': '4M'}}


class Monitor:
    """QEMU's side as the hotplug calls see it: the devices, chardevs and objects of a guest whose
    OS releases a device when asked (``releases``), and the commands it was sent."""

    def __init__(self, device, releases=True, fail=None):
        self.peripherals = [device.id]
        self.chardevs = [device.backend_id] if device.type == 'doorbell' else []
        self.objects = ['pc.ram'] + ([device.backend_id] if device.type == 'plain' else [])
        self.releases, self.fail = releases, fail
        self.sent, self.events = [], []

    def command(self, name, arguments=None, timeout=None, fd=None):
        self.sent.append(name)
        if name == self.fail:
            raise QMPError('%s: refused' % name)
        if name == 'qom-list':
            names = self.peripherals if arguments['path'] == '/machine/peripheral' else self.objects
            return [{'name': item, 'type': 'child<x>'} for item in names]
        if name == 'query-chardev':
            return [{'label': label} for label in self.chardevs]
        if name == 'device_del' and self.releases:
            self.peripherals.remove(arguments['id'])
            self.events.append({'event': 'DEVICE_DELETED', 'data': {'device': arguments['id']},
                                'timestamp': {'seconds': 1700000000, 'microseconds': 0}})
        elif name == 'device_add':
            # QEMU refuses a device whose backend is missing.
            assert arguments.get('chardev', arguments.get('memdev')) in self.chardevs + self.objects
            self.peripherals.append(arguments['id'])
        elif name in ('chardev-add', 'object-add'):
            (self.chardevs if name == 'chardev-add' else self.objects).append(arguments['id'])
        elif name in ('chardev-remove', 'object-del'):
            assert not self.peripherals, 'QEMU refuses to remove a backend its device still uses'
            (self.chardevs if name == 'chardev-remove' else self.objects).remove(arguments['id'])
        return {}

    def wait_event(self, names, timeout, predicate=None):
        matching = [e for e in self.events if e['event'] in names and predicate(e)]
        if not matching:
            raise QMPError('no answer to event %s within the timeout' % '/'.join(names))
        return matching[0]


def device(kind):
    return GuestSpec({'name': 'p', 'ivshmem': [dict(DEVICES[kind], hotplug=True)]}, LAYOUT).devices[0]


@pytest.mark.parametrize('kind,removes', [('doorbell', 'chardev-remove'), ('plain', 'object-del')])
def test_an_unplugged_device_takes_its_backend_with_it_and_comes_back_onto_a_new_one(kind, removes):
    """A plain device's memory backend left behind would still be in the peer's migration stream
    (a RAM block the destination does not have: "Unknown ramblock")."""
    qmp = Monitor(device(kind))
    assert _hotplug.unplug(qmp, device(kind), 5) == 1700000000.0
    assert (qmp.peripherals, qmp.chardevs, qmp.objects) == ([], [], ['pc.ram'])
    assert qmp.sent.index(removes) > qmp.sent.index('device_del') and 'getfd' not in qmp.sent
    assert _hotplug.unplug(qmp, device(kind), 5) is None  # repeated: nothing left to do
    _hotplug.plug(qmp, device(kind), 'pc')
    assert qmp.peripherals == ['ivshmem0'] and device(kind).backend_id in qmp.chardevs + qmp.objects
    adds = 'chardev-add' if kind == 'doorbell' else 'object-add'
    assert qmp.sent.index(adds) < qmp.sent.index('device_add')


def test_a_plain_device_s_backend_stays_while_the_guest_keeps_the_device():
    qmp = Monitor(device('plain'), releases=False)
    with pytest.raises(_hotplug.HotplugError, match='did not release its ivshmem device ivshmem0'):
        _hotplug.unplug(qmp, device('plain'), 1)
    assert qmp.objects == ['pc.ram', 'ivshmem0-mem'] and 'object-del' not in qmp.sent


def test_a_plain_device_that_cannot_be_plugged_back_leaves_no_backend_behind():
    qmp = Monitor(device('plain'))
    _hotplug.unplug(qmp, device('plain'), 5)
    qmp.fail = 'device_add'
    with pytest.raises(_hotplug.HotplugError, match='plugging ivshmem0 back failed'):
        _hotplug.plug(qmp, device('plain'), 'pc')
    assert qmp.objects == ['pc.ram'] and qmp.peripherals == []


def test_a_plain_device_is_never_plugged_back_onto_a_file_that_is_not_there(monkeypatch, tmp_path):
    """object-add would make the file (as the guest's, mode 0644: no other guest could open it)."""
    from ansible_collections.ivshmem.fleet.plugins.module_utils import _guest
    path = str(tmp_path / 'region')
    spec = GuestSpec({'name': 'p', 'ivshmem': [dict(DEVICES['plain'], memory_path=path, hotplug=True)]}, LAYOUT)
    record = {'spec': spec.to_dict(), 'unplugged': ['ivshmem0']}
    monkeypatch.setattr(_guest, 'guest_status', lambda layout, name, registers=True: {'pid': 1, 'record': record})
    qmp = Monitor(spec.devices[0])
    _hotplug.unplug(qmp, spec.devices[0], 5)
    handle = type('Handle', (), {'qmp': lambda self: contextlib.nullcontext(qmp)})()
    monkeypatch.setattr(_guest.GuestHandle, 'of', classmethod(lambda cls, layout, name: handle))
    monkeypatch.setattr(_guest, '_set_unplugged', lambda layout, name, ids: None)
    sent = len(qmp.sent)
    with pytest.raises(_guest.GuestError, match='no shared memory file at %s' % path):
        _guest.plug_devices(LAYOUT, 'p')
    assert qmp.sent[sent:] == [] and qmp.peripherals == []
    open(path, 'wb').close()
    assert list(_guest.plug_devices(LAYOUT, 'p')) == ['ivshmem0'] and qmp.peripherals == ['ivshmem0']
