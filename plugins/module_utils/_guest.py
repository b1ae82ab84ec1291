# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A named QEMU guest with ivshmem devices on this host (ivshmem.fleet.guest)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host, _hotplug, _qemu_binary, _readiness, _tls
from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import ControlError, control_request
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError, ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import (
    GuestSpec, IvshmemDevice, check_int, machine_name, pinned_machine,
    same_machine)
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import GUEST_DEFAULTS
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPError
from ansible_collections.ivshmem.fleet.plugins.module_utils._state_machine import ServiceAdapter
from ansible_collections.ivshmem.fleet.plugins.module_utils._vm import GuestHandle, running_pid
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import WaitTimeout

# QEMU run states that count as "the guest executes" or "paused, resumable by cont".
RESUMABLE = ('paused', 'prelaunch', 'debug', 'suspended')


class GuestError(FleetError):
    """A guest could not be brought to the asked state; the message says why."""


def guest_paths(layout, name):
    return layout.guest_paths(name)


def guest_status(layout, name, registers=True):
    """The guest as it runs now: None if never set up; ``pid`` None when not running."""
    paths = guest_paths(layout, name)
    record = _host.read_json(paths['record'])
    if record is None:
        return None
    spec = record.get('spec')
    if not isinstance(spec, dict) or not isinstance(spec.get('ivshmem'), list):
        # Damaged (not by us: root writes it whole): reported, never fatal.
        record = dict(record, spec=dict(spec if isinstance(spec, dict) else {}, ivshmem=[]), damaged=True)
    # QEMU writes its pidfile as the guest's account, in the guest's directory: the pid counts only
    # for a process of that account (it could name any other).
    uid = _host.uid_of(record['spec'].get('user'))
    pid = running_pid(paths, uid, record.get('process'))
    status = {'name': name, 'pid': pid, 'qmp': paths['qmp'], 'record': record, 'run_state': None,
              'incoming': record.get('incoming', False), 'incoming_uri': record.get('incoming_uri'),
              'accel': record.get('accel'), 'console': paths['console'],
              # The versioned machine type QEMU resolved (pc-i440fx-7.2 for pc on QEMU 7.2): what
              # every later start of this guest runs, here or on a move's destination.
              'machine_type': record.get('machine_type'),
              'ivshmem': [dict(d, ivposition=None, plugged=d.get('id') not in (record.get('unplugged') or []))
                          for d in record['spec']['ivshmem'] if isinstance(d, dict)]}
    if record.get('damaged'):
        status['error'] = 'the record %s is damaged' % paths['record']
    if pid is None:
        status['state'] = 'stopped'
        return status
    # 5 s for each answer, not the handle's 30: a status is read for every guest of a host (the
    # info module), and a QEMU that does not answer is reported as such, not waited on.
    vm = GuestHandle(paths, timeout=5.0)
    try:
        with vm.qmp() as qmp:
            status['run_state'] = vm.status()
            if not status['machine_type']:  # started before types were recorded: ask QEMU
                status['machine_type'] = vm.machine_type()
            migration = qmp.command('query-migrate')
            status['migration'] = {'status': migration.get('status', 'none'),
                                   'blocked_reasons': migration.get('blocked-reasons', []),
                                   # Set when this QEMU sent or received over TLS (_tls.py); '' in clear.
                                   'tls_creds': qmp.command('query-migrate-parameters').get('tls-creds') or ''}
            if registers:
                live = vm.ivshmem_registers()
                for device in status['ivshmem']:
                    device['ivposition'] = live.get(device['id'], {}).get('ivposition')
                    device['role'] = vm.device_role(device['id'])
    except QMPError as exc:
        status['error'] = str(exc)
    for device in status['ivshmem']:
        if device.get('server'):
            device['server_id'] = _server_id(layout, device['server'], status['pid'])
    status['state'] = _state_of(status)
    return status


def _server_id(layout, server, pid):
    """The ID a builtin server gave this guest's QEMU (by its pid, which the server has from
    SO_PEERCRED: a name could be anyone's), or None (not running, not admitted, no status)."""
    if pid is None:
        return None
    control = layout.server_control(server)
    if not os.path.exists(control):
        return None
    try:
        clients = control_request(control, 'status', timeout=5.0)['clients']
    except ControlError:
        return None
    return next((c['id'] for c in clients if c['pid'] == pid), None)


def _admit_to_servers(layout, spec):
    """Tell each builtin server the guest attaches to by name the account its QEMU runs as: a
    server admits only the accounts it knows, and only root adds one (control request admit), so
    another member of the ivshmem group cannot map the memory. A server given by socket path
    admits what its own settings say (its admit list)."""
    uid = _host.uid_of(spec.user)
    for device in spec.devices:
        control = layout.server_control(device.server) if device.server else None
        if control is None or not os.path.exists(control):
            continue  # the upstream server (no admission), or not running (the start says so)
        try:
            control_request(control, 'admit', timeout=5.0, guest=spec.name, uid=uid)
        except ControlError as exc:
            raise GuestError('the ivshmem server %s did not admit guest %s: %s' % (device.server, spec.name, exc))


def _refusal(layout, devices, pid):
    """Why a builtin server refused the QEMU of ``pid`` (its status keeps the latest refusals),
    or None."""
    for device in devices:
        control = layout.server_control(device.server) if device.server else None
        if control is None or not os.path.exists(control):
            continue
        try:
            refusals = control_request(control, 'status', timeout=5.0).get('refusals') or []
        except ControlError:
            continue
        for refusal in refusals:
            if refusal.get('pid') == pid:
                return 'the ivshmem server %s refused it: %s' % (device.server, refusal.get('reason'))
    return None


def _state_of(status):
    run_state = status['run_state']
    if run_state == 'inmigrate' or (status['incoming'] and run_state in ('prelaunch',)):
        return 'incoming'
    if run_state == 'running':
        return 'running'
    if run_state == 'postmigrate':
        return 'migrated'
    return 'paused' if run_state in RESUMABLE else (run_state or 'unknown')


def _set_unplugged(layout, name, ids):
    """Record which devices are out of the guest now (its record says what runs)."""
    paths = guest_paths(layout, name)
    record = _host.read_json(paths['record'])
    if record is not None and sorted(record.get('unplugged') or []) != sorted(ids):
        _host.write_json(paths['record'], dict(record, unplugged=sorted(ids)))


def missing_here(device):
    """What ``device`` (an IvshmemDevice) needs on this host and lacks, as a sentence, or None: its
    server's socket, or its memory file (QEMU would make that as this guest's, mode 0644, and no
    other guest could open it)."""
    if device.type == 'doorbell' and not os.path.exists(device.socket):
        return 'no ivshmem server socket at %s; start the server first' % device.socket
    if device.type == 'plain' and not os.path.lexists(device.memory_path):
        return 'no shared memory file at %s; make it first (ivshmem.fleet.region)' % device.memory_path
    return None


def _devices(layout, record):
    return [IvshmemDevice.from_record(d, layout) for d in record['spec']['ivshmem']]


def unplug_devices(layout, name, timeout):
    """Unplug the guest's hotplug-placed ivshmem devices (the guest keeps running).
    Returns {device ID: time released}; raises _hotplug.HotplugError naming the guest."""
    status = guest_status(layout, name, registers=False)
    if status is None or status['pid'] is None:
        raise GuestError('guest %s is not running, so its devices cannot be unplugged' % name)
    gone = list(status['record'].get('unplugged') or [])
    released = {}
    with GuestHandle.of(layout, name).qmp() as qmp:
        for device in _devices(layout, status['record']):
            if not device.hotplug:
                raise GuestError('guest %s: its %s is not placed for hotplug (hotplug: true, which needs a restart)' % (
                    name, device.id))
            try:
                released[device.id] = _hotplug.unplug(qmp, device, timeout, pid=status['pid'])
            except _hotplug.HotplugError as exc:
                raise _hotplug.HotplugError('guest %s %s' % (name, exc))
            gone = sorted(set(gone) | set([device.id]))
            _set_unplugged(layout, name, gone)
    return released


def plug_devices(layout, name):
    """Plug back the devices the guest's record says are out. Returns {device ID: time plugged}."""
    status = guest_status(layout, name, registers=False)
    if status is None or status['pid'] is None:
        raise GuestError('guest %s is not running, so its devices cannot be plugged back' % name)
    record = status['record']
    gone = list(record.get('unplugged') or [])
    plugged = {}
    with GuestHandle.of(layout, name).qmp() as qmp:
        for device in _devices(layout, record):
            if device.id in gone:
                missing = missing_here(device)  # plugged back by a move, which does not run Guest.check
                if missing:
                    raise GuestError('guest %s: %s cannot be plugged back: %s' % (name, device.id, missing))
                try:
                    plugged[device.id] = _hotplug.plug(qmp, device, record['spec'].get('machine') or GUEST_DEFAULTS['machine'])
                except _hotplug.HotplugError as exc:
                    raise GuestError('guest %s: %s' % (name, exc))
                gone.remove(device.id)
                _set_unplugged(layout, name, gone)
    return plugged


def exit_log(layout, name):
    """The last lines QEMU wrote before guest ``name`` stopped on its own (why a destination
    refused a stream, say), or None while it runs or when it left none."""
    status = guest_status(layout, name, registers=False)
    if status is None or status['pid'] is not None:
        return None
    return _host.tail(guest_paths(layout, name)['log']) or None


def check_incoming_uri(uri, incoming=False, tls=None, in_clear=False):
    """An incoming guest listens on a UNIX socket, or on the one network address it was given
    with TLS (a move's destination; in clear only when the move was asked to be, tls: false).
    Never on every interface, and never in clear for whoever connects first."""
    if not isinstance(uri, str) or not uri.startswith(('tcp:', 'unix:')):
        raise ValidationError('incoming_uri', '%r is not a unix: or tcp: URI' % (uri,))
    if not uri.startswith('tcp:'):
        return
    host = uri[len('tcp:'):].rsplit(':', 1)[0].strip('[]')
    if host in ('', '0.0.0.0', '::', '0'):
        raise ValidationError('incoming_uri', '%s listens on every interface: give the one address the source '
                              'reaches this host on' % uri)
    if incoming and tls is None and not in_clear:
        raise ValidationError('incoming_uri', '%s would take a stream in clear from whoever connects first: a '
                              'network destination is started by ivshmem.fleet.group_migrate, which admits only '
                              'its source over TLS (here, use the default unix: socket)' % uri)


def steps_to(target, status, drifted, restart_on_drift):
    """What brings a guest (``status`` as guest_status reads it) to ``target``, running or
    incoming: the steps in order ('restart', 'start', 'resume', 'plug'), and what becomes of a
    guest that runs otherwise than asked and is not restarted for it: None, 'keep' (warned) or
    'refuse' (a GuestError)."""
    state = status['state'] if status is not None and status['pid'] is not None else None
    if target == 'incoming':
        wrong = state not in (None, 'incoming')
    else:
        wrong = state in ('incoming', 'migrated')
    steps, drift = [], None
    if wrong or drifted:
        if restart_on_drift:
            steps.append('restart')
            state = None
        else:
            drift = 'refuse' if wrong else 'keep'
    if state is None:
        steps.append('start')
    elif target == 'running':
        if state == 'paused':
            steps.append('resume')
        if status['record'].get('unplugged'):
            # A device left unplugged (a live move rolled back or cut short): running means with it.
            steps.append('plug')
    return steps, drift


def drift_message(name, state, drifted):
    why = {'incoming': 'waits for an incoming migration', 'migrated': 'has migrated away (a stale source)',
           'running': 'is running', 'paused': 'is paused'}.get(state, 'runs')
    if drifted:
        why += ' with other settings than asked'
    return 'guest %s %s; set restart_on_drift to restart it' % (name, why)


class Guest:
    """One guest of this host and the work on it: start, stop, remove, pause, resume, plug its
    devices back. Raises FleetErrors and reports nothing: GuestManager is the guest module's
    adapter over it (before, after, changed, check mode); a move (_move.py) calls it directly.
    ``timeout`` bounds a start or a stop, and each QMP answer."""

    def __init__(self, layout, spec, timeout=GUEST_DEFAULTS['timeout'], restart_on_drift=False, incoming_uri=None,
                 incoming_tls=None, incoming_in_clear=False, unplugged=(), machine_type=None):
        self.layout = layout
        self.spec = spec
        self.timeout = timeout
        self.restart_on_drift = restart_on_drift
        self.incoming_uri = incoming_uri or layout.incoming_uri(spec.name)
        # Set by the move engine: the stream is only accepted over TLS from the expected source.
        self.incoming_tls = incoming_tls
        self.incoming_in_clear = incoming_in_clear
        # Set by the move engine for a peer moved live: started without these devices (plugged later).
        self.unplugged = list(unplugged)
        # Set by the move engine: the versioned machine type the guest resolved on its source.
        self.machine_type = machine_type
        self.paths = guest_paths(layout, spec.name)
        # Each QMP answer may take the timeout: it bounds the whole task.
        self.vm = GuestHandle(self.paths, timeout=timeout)

    @classmethod
    def from_params(cls, params, layout):
        """The guest as the guest module's options (or a group's guest entry) describe it."""
        spec = GuestSpec(params, layout)
        timeout = check_int('timeout', params.get('timeout', GUEST_DEFAULTS['timeout']), 1, 86400)  # 0 would fail half-way
        restart_on_drift = params.get('restart_on_drift', GUEST_DEFAULTS['restart_on_drift'])
        incoming_uri = params.get('incoming_uri') or layout.incoming_uri(spec.name)
        incoming_tls = _tls.check_settings('incoming_tls', params.get('incoming_tls'))
        incoming_in_clear = bool(params.get('incoming_in_clear'))
        check_incoming_uri(incoming_uri)
        machine_type = params.get('machine_type')
        if machine_type is not None and (not isinstance(machine_type, str) or machine_name(machine_type) != machine_type):
            raise ValidationError('machine_type', '%r is not a machine type' % (machine_type,))
        return cls(layout, spec, timeout, restart_on_drift, incoming_uri, incoming_tls, incoming_in_clear,
                   params.get('unplugged') or [], machine_type)

    # --- what it is -----------------------------------------------------------------------
    def status(self, registers=True):
        return guest_status(self.layout, self.spec.name, registers)

    def check_incoming(self):
        """The URI may take an incoming stream (check_incoming_uri)."""
        check_incoming_uri(self.incoming_uri, True, self.incoming_tls, self.incoming_in_clear)

    def check(self, assume_servers=False):
        """Its doorbell servers listen, and it is the only master of its shared memory on this host
        (QEMU does not stop two plain masters); its plain memory files are there (root's regions).
        ``assume_servers`` (check mode: a server or region task before only predicted its start): a
        missing socket or file is a warning. Returns the warnings."""
        warnings = []
        mine = dict((d.memory_key, i) for i, d in enumerate(self.spec.devices) if d.role == 'master')
        for device_index, device in enumerate(self.spec.devices):
            message = missing_here(device)
            if message is None:
                continue
            field = 'ivshmem[%d].%s' % (device_index, 'memory_path' if device.type == 'plain' else
                                        'server' if device.server else 'socket')
            if not assume_servers:
                raise ValidationError(field, message)
            warnings.append('%s: %s (assumed made by an earlier task in check mode)' % (field, message))
        if not mine:
            return warnings
        for other in _host.names(self.layout.kind_dir('guests')):
            if other == self.spec.name:
                continue
            status = guest_status(self.layout, other, registers=False)
            if status is None or status['pid'] is None or status['state'] == 'migrated':
                continue
            for device in status['record']['spec']['ivshmem']:
                key = ('server', device['socket']) if device['type'] == 'doorbell' else ('file', device['memory_path'])
                if device['role'] == 'master' and tuple(key) in mine:
                    raise ValidationError('ivshmem[%d].role' % mine[tuple(key)],
                                          'guest %s is already the master of this shared memory' % other)
        return warnings

    def drifted(self, status):
        """It runs (``status``) with other settings than its spec."""
        if status is None or status['pid'] is None:
            return False
        return self.spec.differs_from(status['record']['spec'], status.get('machine_type'))

    def machine(self, status):
        """The machine to start: the versioned type this guest resolved before (given by a move,
        or in its record when the same machine is asked), else the machine as asked."""
        if self.machine_type:
            return pinned_machine(self.spec.machine, self.machine_type)
        record = (status or {}).get('record') or {}
        if record.get('machine_type') and same_machine(self.spec.machine, (record.get('spec') or {}).get('machine') or GUEST_DEFAULTS['machine'],
                                                       record['machine_type']):
            return pinned_machine(self.spec.machine, record['machine_type'])
        return self.spec.machine

    def check_binary(self, machine, check_mode=False):
        """This host's QEMU runs the machine and the devices (before anything changes)."""
        _qemu_binary.check_guest(_qemu_binary.capabilities(self.spec.binary, _qemu_binary.cache_dir(self.layout, check_mode)),
                                 machine, self.spec.device_types, _host.hostname())

    # --- the work -------------------------------------------------------------------------
    def start(self, status, incoming=False):
        """Start it (it does not run; ``status`` as it was read): the seconds waited."""
        machine = self.machine(status)
        self.check_binary(machine)
        return self.launch(machine, incoming)

    def launch(self, machine, incoming=False):
        """Start QEMU with ``machine`` (checked already), until QMP answers: the seconds waited."""
        spec = self.spec
        accel = spec.accel
        if accel == 'auto':
            accel = 'kvm' if _host.kvm_usable_by(spec.user, spec.group) else 'tcg'
        _host.ensure_account(spec.user, spec.group, False)
        _admit_to_servers(self.layout, spec)
        _host.ensure_dir(os.path.dirname(self.paths['dir']), 0o755)
        # Its own: QMP, console and pidfile are nobody else's (other guests share the group).
        _host.ensure_dir(self.paths['dir'], 0o700, spec.user, spec.group)
        _host.remove_stale_socket(self.paths['qmp'])
        argv = spec.argv(self.layout, accel, incoming, unplugged=self.unplugged, machine=machine)
        record = {'spec': spec.to_dict(), 'accel': accel, 'incoming': incoming, 'argv': argv,
                  'incoming_uri': self.incoming_uri if incoming else None, 'unplugged': sorted(self.unplugged),
                  'machine_type': machine_name(machine) if machine != spec.machine else None}
        _host.write_json(self.paths['record'], record)
        # Not -daemonize: QEMU's sandbox (spawn=deny) kills the fork. QEMU runs in its own
        # session instead, and readiness is "QMP answers a command" (after the ivshmem handshake).
        process = _host.spawn(argv + ['-pidfile', self.paths['pidfile']], self.paths['log'], spec.user, spec.group)
        try:
            _value, waited = _readiness.wait('qmp_answers', self.timeout, self.vm, process.poll,
                                             lambda: _refusal(self.layout, spec.devices, process.pid))
        except (WaitTimeout, _host.HostError) as exc:
            if process.poll() is None:
                process.kill()
            process.wait()
            _host.remove_stale_socket(self.paths['qmp'])
            raise GuestError('guest %s did not start: %s; log: %s' % (spec.name, exc, _host.tail(self.paths['log'])))
        with self.vm.qmp() as qmp:
            # Held from spawn: later calls know this QEMU by pid and start time, never by its pidfile.
            _host.write_json(self.paths['record'], dict(record, machine_type=self.vm.machine_type(),
                                                        process=[process.pid, _host.start_time(process.pid)]))
            if incoming:
                _tls.setup_destination(qmp, _tls.for_guest(self.incoming_tls, spec.user, self.layout.runtime_dir))
                qmp.command('migrate-incoming', {'uri': self.incoming_uri})
        return round(waited, 3)

    def stop(self):
        """Stop QEMU (QMP quit, then signals): the seconds waited (0.0: it did not run)."""
        return round(self.vm.quit(self.timeout), 3)

    def remove(self):
        """Stop it and remove all it has here: the seconds waited, or None when it had nothing here."""
        if _host.read_json(self.paths['record']) is None:
            return None
        waited = self.stop()
        shutil.rmtree(self.paths['dir'], ignore_errors=True)
        return waited

    def pause(self):
        self.vm.stop()

    def resume(self):
        self.vm.cont()

    def plug(self):
        """Its unplugged devices plugged back (plug_devices)."""
        return plug_devices(self.layout, self.spec.name)

    def settle(self, wait_bars=False):
        """Its status once it runs (its BARs assigned, with ``wait_bars``): (status, warnings)."""
        warnings = []
        if wait_bars and self.spec.devices:
            try:
                _value, _waited = _readiness.wait('bars_assigned', 15, self.vm)
            except WaitTimeout as exc:
                warnings.append('IVPOSITION not readable yet: %s' % exc)
        status = self.status()
        record = status.pop('record', None)
        if record is not None and status['machine_type'] and not record.get('machine_type'):
            # A guest started before types were recorded: its type kept now, without a restart.
            _host.write_json(self.paths['record'], dict(record, machine_type=status['machine_type']))
        return status, warnings

    # --- what a move asks of it -----------------------------------------------------------
    def keep_running(self):
        """Running: started if it is not, resumed if paused, its devices plugged back (as the
        guest module's state running). (changed, its status once its BARs are assigned)."""
        changed = self._bring_to('running')
        return changed, self.settle(wait_bars=True)[0]

    def receive(self):
        """Started waiting for an incoming migration at its incoming URI, unless it waits
        already (as the guest module's state incoming): its status."""
        self.check_incoming()
        self._bring_to('incoming')
        return self.settle()[0]

    def _bring_to(self, target):
        self.check()
        status = self.status(registers=False)
        drifted = self.drifted(status)
        steps, drift = steps_to(target, status, drifted, self.restart_on_drift)
        if drift == 'refuse':
            raise GuestError(drift_message(self.spec.name, status['state'], drifted))
        for step in steps:
            if step == 'restart':
                self.stop()
            elif step == 'start':
                self.start(status, incoming=target == 'incoming')
            elif step == 'resume':
                self.resume()
            else:
                self.plug()
        return bool(steps)


class GuestManager(ServiceAdapter):
    """ivshmem.fleet.guest: one method per state, each deciding from the guest's status what
    changes (before, after, changed, check mode) and leaving the work to Guest."""

    def __init__(self, params, layout, check_mode):
        self.guest = Guest.from_params(params, layout)
        super(GuestManager, self).__init__(self.guest, self.guest.status(registers=False), check_mode)

    @staticmethod
    def view(status):
        if status is None:
            return {'state': 'absent'}
        return {'state': status['state'], 'spec': status['record']['spec']}

    @property
    def running(self):
        return self.current is not None and self.current['pid'] is not None

    # --- states ---------------------------------------------------------------------------
    def state_running(self):
        self._bring_to('running')
        self._report(wait_bars=True)

    def state_paused(self):
        if not self.running:
            raise GuestError('guest %s is not running, so it cannot be paused' % self.spec.name)
        if self.current['state'] == 'running':
            self.after = dict(self.before, state='paused')
            if self.change('stop'):
                self.guest.pause()
        self._report()

    def state_incoming(self):
        self.guest.check_incoming()
        self._bring_to('incoming')
        self._report()

    def state_stopped(self):
        if self.running:
            self.after = dict(self.before, state='stopped')
            if self.change('stop'):
                self.result['waited'] = self.guest.stop()
        self._report()

    def state_absent(self):
        if self.current is not None:
            self.after = {'state': 'absent'}
            if self.change('remove'):
                self.result['waited'] = self.guest.remove()
        self.result['guest'] = {'name': self.spec.name, 'state': 'absent'}

    # --- steps ----------------------------------------------------------------------------
    def _bring_to(self, target):
        self.warnings.extend(self.guest.check(assume_servers=self.check_mode))
        drifted = self.guest.drifted(self.current)
        steps, drift = steps_to(target, self.current, drifted, self.guest.restart_on_drift)
        if drift is not None:
            state = self.current['state']
            message = drift_message(self.spec.name, state, drifted)
            if drift == 'refuse':
                raise GuestError(message)
            self.warnings.append(message + ' (the diff shows the difference)')
            self.after = {'state': state, 'spec': self.spec.to_dict()}
        for step in steps:
            getattr(self, '_' + step)(target)

    def _restart(self, target):
        if self.change('restart'):
            self.guest.stop()
        self.current = dict(self.current, pid=None)

    def _start(self, target):
        self.after = {'state': target, 'spec': self.spec.to_dict()}
        machine = self.guest.machine(self.current)
        # Before anything changes (check mode too): this host's QEMU runs the machine and devices.
        self.guest.check_binary(machine, self.check_mode)
        if self.change('start'):
            self.result['waited'] = self.guest.launch(machine, incoming=target == 'incoming')

    def _resume(self, target):
        self.after = dict(self.before, state='running')
        if self.change('cont'):
            self.guest.resume()

    def _plug(self, target):
        self.after = dict(self.after, plugged=True)
        if self.change('plug'):
            self.guest.plug()

    def _report(self, wait_bars=False):
        if self.check_mode:
            self.result['guest'] = dict(self.after, name=self.spec.name, qmp=self.guest.paths['qmp'])
            self.result['guest'].pop('spec', None)
            return
        self.result['guest'], warnings = self.guest.settle(wait_bars)
        self.warnings.extend(warnings)
