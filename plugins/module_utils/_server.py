# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A named ivshmem server on this host: install, start, stop, inspect (ivshmem.fleet.server)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import io
import os
import pwd
import shutil
import sys
import zipfile

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host, _hugepages, _readiness, _rules
from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import ControlError, control_request
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._layout import Layout
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import SERVICE_GROUP, ServerSpec, check_int, check_path
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import SERVER_DEFAULTS
from ansible_collections.ivshmem.fleet.plugins.module_utils._state_machine import ServiceAdapter
from ansible_collections.ivshmem.fleet.plugins.module_utils._supervisor import supervisor_for

_PACKAGE = 'ansible_collections.ivshmem.fleet.plugins.module_utils'
# The server runs as the service user: the interpreter must be one that user may run
# (a controller's pyenv or venv under /root is not), so the system one comes first.
SYSTEM_PYTHON = '/usr/bin/python3'
_MAIN = 'import sys\nfrom %s.%s import main\nsys.exit(main())\n'


def _zipapp(main, modules):
    """A zipapp of ``modules`` that runs ``main``'s main() (deterministic bytes, so installs are
    idempotent)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as archive:
        def add(path, text):
            archive.writestr(zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0)), text)
        add('__main__.py', _MAIN % (_PACKAGE, main))
        parts = (_PACKAGE + '.ivshmem_server').split('.')
        for depth in range(1, len(parts) + 1):
            add('/'.join(parts[:depth]) + '/__init__.py', '')  # the server package's is empty too
        for module in modules:
            add(module.__name__.replace('.', '/') + '.py', module.__spec__.loader.get_source(module.__name__))
    return buffer.getvalue()


def builtin_program():
    """The builtin server as a zipapp."""
    # Imported here, where a server is installed, rather than by every call that only looks at one
    # (compiling the server program costs each of them about 11 ms here); Ansible packs whatever
    # any import statement names, so they still reach the host.
    from ansible_collections.ivshmem.fleet.plugins.module_utils import (
        _control_protocol, _errors, _ivshmem_protocol, _ivshmem_send, _rules, _sizes)
    from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server import (
        admission, cli, clients, config, control, ids, loop, system)
    return _zipapp('ivshmem_server.cli', (admission, cli, clients, config, control, ids, loop, system, _errors,
                                          _ivshmem_protocol, _ivshmem_send, _sizes, _control_protocol, _rules))


def peer_program():
    """The host-side peer (ivshmem_server/peer.py) as a zipapp."""
    from ansible_collections.ivshmem.fleet.plugins.module_utils import _errors, _ivshmem_protocol
    from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server import peer
    return _zipapp('ivshmem_server.peer', (peer, _errors, _ivshmem_protocol))


def server_paths(layout, name):
    return layout.server_paths(name)


def _held(paths):
    """[pid, start time] of the server root saw listening once it started (daemon supervisor)."""
    return (_host.read_json(paths['held']) or {}).get('process')


def server_status(layout, name, supervisor_kind='auto'):
    """What runs now: None if nothing was ever set up, else a dict (pid None when stopped)."""
    paths = server_paths(layout, name)
    record = _host.read_json(paths['record'])
    if record is None:
        return None
    supervisor = supervisor_for(name, paths['pidfile'], paths['socket'], paths['log'], supervisor_kind, record.get('user'),
                                _held(paths))
    pid = supervisor.pid()
    builtin = record.get('implementation', 'builtin') == 'builtin'
    status = {'name': name, 'pid': pid, 'state': 'started' if pid else 'stopped', 'spec': record,
              'socket': paths['socket'], 'control': paths['control'] if builtin else None,
              'memory': record.get('memory_path'), 'supervisor': supervisor.kind,
              'hold': None, 'clients': None}
    if pid and builtin:
        try:
            live = control_request(paths['control'], 'status')
            status.update(hold=live['hold'], clients=live['clients'], refused=live['refused'])
        except ControlError as exc:
            status['error'] = str(exc)
    return status


def steps_to_started(status, desired_record, hold, restart_on_drift):
    """What brings a server (``status`` as server_status reads it) to started: the steps in
    order ('stop', 'start', 'hold': its hold set as asked), and whether it keeps running with
    other settings than asked (``desired_record``) because restart_on_drift is not set."""
    running = status is not None and status['pid']
    drift = bool(running and status['spec'] != desired_record)
    steps = []
    if drift and restart_on_drift:
        steps.append('stop')
    if not running or (drift and restart_on_drift):
        steps.append('start')
    elif status['control'] and status['hold'] != hold:  # builtin: a control socket
        steps.append('hold')
    return steps, drift and not restart_on_drift


class Server:
    """One ivshmem server of this host and the work on it: start, stop, restart, remove, set
    its hold. Raises FleetErrors and reports nothing: ServerManager is the server module's
    adapter over it (before, after, changed, check mode); a move (_move.py) calls it directly."""

    def __init__(self, layout, spec, timeout=SERVER_DEFAULTS['timeout'], restart_on_drift=False,
                 program_dir=SERVER_DEFAULTS['program_dir'], supervisor=SERVER_DEFAULTS['supervisor']):
        self.layout = layout
        self.spec = spec
        self.timeout = timeout
        self.restart_on_drift = restart_on_drift
        self.program_dir = program_dir
        self.paths = server_paths(layout, spec.name)
        running_as = (_host.read_json(self.paths['record']) or {}).get('user') or spec.user
        self.supervisor = supervisor_for(spec.name, self.paths['pidfile'], self.paths['socket'],
                                         self.paths['log'], supervisor, running_as, _held(self.paths))

    @classmethod
    def from_params(cls, params, layout):
        """The server as the server module's options (or a group's server entry) describe it."""
        if params.get('admission') == 'held' and not params.get('hold_for'):
            raise ValidationError('hold_for', 'admission held needs the master guest name in hold_for')
        spec = ServerSpec(dict(params, hold=params.get('hold_for') if params.get('admission') == 'held' else None), layout)
        timeout = check_int('timeout', params.get('timeout', SERVER_DEFAULTS['timeout']), 1, 86400)  # 0 would fail half-way
        restart_on_drift = params.get('restart_on_drift', SERVER_DEFAULTS['restart_on_drift'])
        program_dir = check_path('program_dir', params.get('program_dir') or SERVER_DEFAULTS['program_dir'])
        if program_dir.split('/')[1] in ('proc', 'sys', 'dev'):
            raise ValidationError('program_dir', '%s is in a kernel file system, not a place for a program' % program_dir)
        return cls(layout, spec, timeout, restart_on_drift, program_dir, params.get('supervisor') or SERVER_DEFAULTS['supervisor'])

    # --- what it is -----------------------------------------------------------------------
    def status(self):
        return server_status(self.layout, self.spec.name, self.supervisor.kind)

    def desired_record(self):
        return dict(self.spec.to_dict(), memory_path=self.spec.memory_path())

    # --- the work -------------------------------------------------------------------------
    def start(self):
        """Start it (it does not run), until it listens: the seconds waited."""
        spec = self.spec
        if spec.implementation == 'qemu':
            self._refuse_squatted_memory()  # before anything is made for it
        # Every account first, all or none: a failed useradd leaves no account, directory or record.
        uids = self._guest_uids()
        _host.ensure_dir(os.path.dirname(self.paths['dir']), 0o755)
        _host.ensure_dir(self.paths['dir'], 0o750, spec.user, spec.group)
        program = None
        if spec.implementation == 'builtin':
            _host.ensure_dir(self.program_dir, 0o755)
            program = Layout.program(self.program_dir)
            _host.write_file(program, builtin_program(), 0o644)
            _host.write_file(Layout.peer_program(self.program_dir), peer_program(), 0o644)
        _host.remove_stale_socket(self.paths['socket'])
        if spec.hugepages:
            _hugepages.prepare_memory_dir(self.layout, spec.memory_dir, spec.hugepages)
        elif spec.memory_dir:
            _host.ensure_dir(spec.memory_dir, 0o755)  # an existing one (/dev/shm) keeps its mode
        _host.write_json(self.paths['record'], self.desired_record())
        foreground = self.supervisor.kind == 'systemd'
        self.supervisor.user = spec.user  # from now on it runs as this account
        _host.write_json(self.paths['held'], {})  # the next server is the one root sees start
        self.supervisor.held = None
        python = SYSTEM_PYTHON if os.path.exists(SYSTEM_PYTHON) else sys.executable
        argv = spec.argv(self.layout, python, program, foreground, uids)  # the upstream server's has none
        waited = self.supervisor.start(argv, spec.user, spec.group, self.timeout,
                                       notify=spec.implementation == 'builtin',
                                       writable=(self.paths['dir'], spec.memory_dir or '/dev/shm'),
                                       # Upstream's socket takes the umask's mode: its group (the
                                       # guests') must reach it. Ours sets its modes itself.
                                       umask=0o007 if spec.implementation == 'qemu' else 0o077)
        _value, gated = _readiness.wait('server_listening', self.timeout, self.paths['socket'], self.supervisor.pid)
        if self.supervisor.kind == 'daemon':
            # It daemonized itself: held from now on as the process the kernel says listens on
            # its socket, under its account, and never by the pidfile that account writes.
            pid = _host.socket_owner(self.paths['socket'], _host.uid_of(spec.user))
            if pid is not None:
                self.supervisor.held = [pid, _host.start_time(pid)]
                _host.write_json(self.paths['held'], {'process': self.supervisor.held})
        return round(waited + gated, 3)

    def stop(self):
        """Stop it: the seconds waited."""
        waited = round(self.supervisor.stop(self.timeout), 3)
        _host.remove_stale_socket(self.paths['socket'])
        return waited

    def restart(self):
        """A fresh server (stopped first if it runs): the seconds its start waited."""
        status = self.status()
        if status is not None and status['pid']:
            self.stop()
        return self.start()

    def remove(self):
        """Stop it if it runs, then remove its unit, its directory and what it left of its
        memory: the warnings (a memory file left in place)."""
        status = self.status()
        if status is None:
            return []
        if status['pid']:
            self.stop()
        self.supervisor.remove()
        shutil.rmtree(self.paths['dir'], ignore_errors=True)
        return self._remove_memory(status['spec'])

    def set_hold(self):
        """Admission held for its spec's master (only that guest admitted), or open (no hold)."""
        if self.spec.hold:
            control_request(self.paths['control'], 'hold', master=self.spec.hold,
                            uid=self._guest_uids()[self.spec.hold])
        else:
            control_request(self.paths['control'], 'release')

    def keep_started(self):
        """Started if it is not (restarted when it runs with other settings and restart_on_drift
        says so), its hold as its spec says (as the server module's state started)."""
        steps, _kept = steps_to_started(self.status(), self.desired_record(), self.spec.hold, self.restart_on_drift)
        for step in steps:
            {'stop': self.stop, 'start': self.start, 'hold': self.set_hold}[step]()

    # --- its parts ------------------------------------------------------------------------
    def _remove_memory(self, recorded):
        """Remove what the server left of its memory: a file of the service account only.

        The record is the service account's to rewrite, so its path is never trusted: the path
        is rebuilt from the record's validated name and directory, and the file must belong to
        the account this task names.
        """
        try:
            spec = ServerSpec(dict(recorded, name=self.spec.name, pins={}, hold=None, user=self.spec.user,
                                   group=self.spec.group, max_clients=None), self.layout)
        except ValidationError:
            spec = self.spec
        memory = spec.memory_path()
        if memory and _host.account_exists(self.spec.user, self.spec.group):
            try:
                _host.remove_own_file(memory, pwd.getpwnam(self.spec.user).pw_uid)
            except _host.HostError as exc:  # another account's file (a server of an older version, say)
                return ['memory of server %s left in place: %s' % (self.spec.name, exc)]
        return []

    def _refuse_squatted_memory(self):
        """QEMU's server opens its memory name without O_EXCL: a name another account made first
        (to read or write the group's memory) would be used as it is (the rule: _rules.squatted)."""
        path = self.spec.memory_path()
        try:
            info = os.lstat(path) if path else None
        except FileNotFoundError:
            return
        if info is None:
            return
        uid = _host.uid_of(self.spec.user)
        if _rules.squatted(info, uid):
            raise ValidationError('shm_name', 'shared memory %s already exists and is not a file of %s (uid %d, %d '
                                  'links): refusing a squatted name' % (path, self.spec.user, info.st_uid, info.st_nlink))

    def _accounts(self):
        """(user, group) of the server and of the guests it knows by account (the server starts
        before its guests, and must know them already)."""
        guests = self.spec.guest_accounts() if self.spec.implementation == 'builtin' else {}
        return [(self.spec.user, self.spec.group)] + [(user, SERVICE_GROUP) for _guest, user in sorted(guests.items())]

    def _guest_uids(self):
        """{guest: uid} of the guests the server knows by account; accounts made as needed."""
        _host.ensure_accounts(self._accounts())
        return dict((guest, pwd.getpwnam(user).pw_uid) for guest, user in sorted(self.spec.guest_accounts().items()))


class ServerManager(ServiceAdapter):
    """ivshmem.fleet.server: one method per state, each deciding from the server's status what
    changes (before, after, changed, check mode) and leaving the work to Server."""

    def __init__(self, params, layout, check_mode):
        self.server = Server.from_params(params, layout)
        super(ServerManager, self).__init__(self.server, self.server.status(), check_mode)

    @staticmethod
    def view(status):
        if status is None:
            return {'state': 'absent'}
        return {'state': status['state'], 'spec': status['spec'], 'hold': status['hold']}

    @property
    def running(self):
        return self.current is not None and self.current['pid']

    # --- states ---------------------------------------------------------------------------
    def state_started(self):
        steps, drift_kept = steps_to_started(self.current, self.server.desired_record(), self.spec.hold,
                                             self.server.restart_on_drift)
        if drift_kept:
            self.warnings.append('server %s runs with other settings than asked; the diff shows them. '
                                 'Set restart_on_drift (this strands its guests) or state restarted.' % self.spec.name)
        for step in steps:
            getattr(self, '_' + step)()
        self._report()

    def state_restarted(self):
        if self.running:
            self._stop()
        self._start()
        self._report()

    def state_stopped(self):
        if self.running:
            self._stop()
        self.after = {'state': 'stopped' if self.current else 'absent'}
        self._report()

    def state_absent(self):
        if self.running:
            self._stop()
        if self.current is not None:
            if self.change('remove'):
                self.warnings.extend(self.server.remove())
        self.after = {'state': 'absent'}
        self.result['server'] = {'name': self.spec.name, 'state': 'absent'}

    # --- steps ----------------------------------------------------------------------------
    def _start(self):
        self.after = {'state': 'started', 'spec': self.server.desired_record(),
                      'hold': self.spec.hold if self.spec.implementation == 'builtin' else None}
        if self.change('start'):
            self.result['waited'] = self.server.start()

    def _stop(self):
        if self.change('stop'):
            self.result['waited'] = self.server.stop()

    def _hold(self):
        self.after = dict(self.after, hold=self.spec.hold)
        if self.change('hold'):
            self.server.set_hold()

    def _report(self):
        status = None if self.check_mode else self.server.status()
        if status is None:
            status = dict(self.after, name=self.spec.name, socket=self.server.paths['socket'], pid=None)
        status.pop('spec', None)
        status['implementation'] = self.spec.implementation
        status['size'] = self.spec.size
        status['vectors'] = self.spec.vectors
        self.result['server'] = status
