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

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host, _readiness, _rules
from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import ControlError, control_request
from ansible_collections.ivshmem.fleet.plugins.module_utils._layout import Layout
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import SERVICE_GROUP, ServerSpec, check_int, check_path
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import SERVER_DEFAULTS
from ansible_collections.ivshmem.fleet.plugins.module_utils._state_machine import StateMachine
from ansible_collections.ivshmem.fleet.plugins.module_utils._supervisor import supervisor_for

_PACKAGE = 'ansible_collections.ivshmem.fleet.plugins.module_utils'
# The server runs as the service user: the interpreter must be one that user may run
# (a controller's pyenv or venv under /root is not), so the system one comes first.
SYSTEM_PYTHON = '/usr/bin/python3'
_MAIN = ('import sys\nfrom %s.ivshmem_server.cli import main\nsys.exit(main())\n' % _PACKAGE)


def builtin_program():
    """The builtin server as a zipapp (deterministic bytes, so installs are idempotent)."""
    # Imported here, where a server is installed, rather than by every call that only looks at one
    # (compiling the server program costs each of them about 11 ms here); Ansible packs whatever
    # any import statement names, so they still reach the host.
    from ansible_collections.ivshmem.fleet.plugins.module_utils import (
        _control_protocol, _errors, _ivshmem_protocol, _ivshmem_send, _rules, _sizes, ivshmem_server)
    from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server import (
        admission, cli, clients, config, control, ids, loop, system)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as archive:
        def add(path, text):
            archive.writestr(zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0)), text)
        add('__main__.py', _MAIN)
        parts = _PACKAGE.split('.')
        for depth in range(1, len(parts) + 1):
            add('/'.join(parts[:depth]) + '/__init__.py', '')
        for module in (ivshmem_server, admission, cli, clients, config, control, ids, loop, system,
                       _errors, _ivshmem_protocol, _ivshmem_send, _sizes, _control_protocol, _rules):
            path = module.__name__.replace('.', '/') + ('/__init__.py' if module is ivshmem_server else '.py')
            add(path, module.__spec__.loader.get_source(module.__name__))
    return buffer.getvalue()


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


class ServerManager(StateMachine):
    def __init__(self, params, layout, check_mode):
        super(ServerManager, self).__init__(check_mode)
        self.layout = layout
        if params.get('admission') == 'held' and not params.get('hold_for'):
            raise ValidationError('hold_for', 'admission held needs the master guest name in hold_for')
        self.spec = ServerSpec(dict(params, hold=params.get('hold_for') if params.get('admission') == 'held' else None))
        self.timeout = check_int('timeout', params.get('timeout', SERVER_DEFAULTS['timeout']), 1, 86400)  # 0 would fail half-way
        self.restart_on_drift = params.get('restart_on_drift', SERVER_DEFAULTS['restart_on_drift'])
        self.program_dir = check_path('program_dir', params.get('program_dir') or SERVER_DEFAULTS['program_dir'])
        if self.program_dir.split('/')[1] in ('proc', 'sys', 'dev'):
            raise ValidationError('program_dir', '%s is in a kernel file system, not a place for a program' % self.program_dir)
        self.paths = server_paths(layout, self.spec.name)
        running_as = (_host.read_json(self.paths['record']) or {}).get('user') or self.spec.user
        self.supervisor = supervisor_for(self.spec.name, self.paths['pidfile'], self.paths['socket'],
                                         self.paths['log'], params.get('supervisor') or SERVER_DEFAULTS['supervisor'], running_as,
                                         _held(self.paths))
        self.current = server_status(layout, self.spec.name, self.supervisor.kind)
        self.before = self._view(self.current)
        self.after = dict(self.before)

    def _desired_record(self):
        return dict(self.spec.to_dict(), memory_path=self.spec.memory_path())

    @staticmethod
    def _view(status):
        if status is None:
            return {'state': 'absent'}
        return {'state': status['state'], 'spec': status['spec'], 'hold': status['hold']}

    # --- states ---------------------------------------------------------------------------
    def state_started(self):
        running = self.current is not None and self.current['pid']
        drift = running and self.current['spec'] != self._desired_record()
        if drift:
            if self.restart_on_drift:
                self._stop()
            else:
                self.warnings.append('server %s runs with other settings than asked; the diff shows them. '
                                     'Set restart_on_drift (this strands its guests) or state restarted.' % self.spec.name)
        if not running or (drift and self.restart_on_drift):
            self._start()
        elif self.current['control'] and self.current['hold'] != self.spec.hold:  # builtin: a control socket
            self._set_hold()
        self._report()

    def state_restarted(self):
        if self.current is not None and self.current['pid']:
            self._stop()
        self._start()
        self._report()

    def state_stopped(self):
        if self.current is not None and self.current['pid']:
            self._stop()
        self.after = {'state': 'stopped' if self.current else 'absent'}
        self._report()

    def state_absent(self):
        if self.current is not None and self.current['pid']:
            self._stop()
        if self.current is not None:
            if self.change('remove'):
                self.supervisor.remove()
                shutil.rmtree(self.paths['dir'], ignore_errors=True)
                self._remove_memory()
        self.after = {'state': 'absent'}
        self.result['server'] = {'name': self.spec.name, 'state': 'absent'}

    # --- steps ----------------------------------------------------------------------------
    def _remove_memory(self):
        """Remove what the server left of its memory: a file of the service account only.

        The record is the service account's to rewrite, so its path is never trusted: the path
        is rebuilt from the record's validated name and directory, and the file must belong to
        the account this task names.
        """
        recorded = self.current['spec']
        try:
            spec = ServerSpec(dict(recorded, name=self.spec.name, pins={}, hold=None, user=self.spec.user,
                                   group=self.spec.group, max_clients=None))
        except ValidationError:
            spec = self.spec
        memory = spec.memory_path()
        if memory and _host.account_exists(self.spec.user, self.spec.group):
            try:
                _host.remove_own_file(memory, pwd.getpwnam(self.spec.user).pw_uid)
            except _host.HostError as exc:  # another account's file (a server of an older version, say)
                self.warnings.append('memory of server %s left in place: %s' % (self.spec.name, exc))

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

    def _start(self):
        self.after = {'state': 'started', 'spec': self._desired_record(),
                      'hold': self.spec.hold if self.spec.implementation == 'builtin' else None}
        if not self.change('start'):
            return
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
        _host.remove_stale_socket(self.paths['socket'])
        if spec.memory_dir:
            _host.ensure_dir(spec.memory_dir, 0o755)  # an existing one (/dev/shm) keeps its mode
        _host.write_json(self.paths['record'], self._desired_record())
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
        self.result['waited'] = round(waited + gated, 3)

    def _stop(self):
        if self.change('stop'):
            self.result['waited'] = round(self.supervisor.stop(self.timeout), 3)
            _host.remove_stale_socket(self.paths['socket'])

    def _set_hold(self):
        self.after = dict(self.after, hold=self.spec.hold)
        if self.change('hold'):
            if self.spec.hold:
                control_request(self.paths['control'], 'hold', master=self.spec.hold,
                                uid=self._guest_uids()[self.spec.hold])
            else:
                control_request(self.paths['control'], 'release')

    def _report(self):
        status = None if self.check_mode else server_status(self.layout, self.spec.name, self.supervisor.kind)
        if status is None:
            status = dict(self.after, name=self.spec.name, socket=self.paths['socket'], pid=None)
        status.pop('spec', None)
        status['implementation'] = self.spec.implementation
        status['size'] = self.spec.size
        status['vectors'] = self.spec.vectors
        self.result['server'] = status
