# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Host supervision of long-running servers: a systemd unit where systemd runs, else a
self-daemonizing process with a pidfile. Both offer pid(), start() and stop()."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shlex

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host

SYSTEMCTL_TIMEOUT = 300  # systemctl waits for a unit's start or stop, itself bounded by the unit

UNIT_DIR = '/etc/systemd/system'
# The server's sandbox. /dev/shm (and /dev/hugepages) stay the host's under PrivateDevices;
# sockets on the file system reach it across PrivateNetwork; reading a client's
# /proc/PID/cmdline (same account) stays possible under ProcSubset=pid.
HARDENING = [
    'NoNewPrivileges=yes', 'CapabilityBoundingSet=', 'AmbientCapabilities=',
    'ProtectHome=yes', 'PrivateTmp=yes', 'PrivateDevices=yes', 'DevicePolicy=closed', 'PrivateNetwork=yes',
    'IPAddressDeny=any', 'RestrictAddressFamilies=AF_UNIX', 'RestrictNamespaces=yes', 'RestrictRealtime=yes',
    'RestrictSUIDSGID=yes', 'LockPersonality=yes', 'MemoryDenyWriteExecute=yes',
    'ProtectKernelTunables=yes', 'ProtectKernelModules=yes', 'ProtectKernelLogs=yes',
    'ProtectControlGroups=yes', 'ProtectClock=yes', 'ProtectHostname=yes', 'ProcSubset=pid',
    'KeyringMode=private', 'SystemCallArchitectures=native',
    'SystemCallFilter=@system-service', 'SystemCallFilter=~@privileged', 'SystemCallErrorNumber=EPERM',
]


class DaemonSupervisor:
    """The process daemonizes itself (no -F) and writes its pidfile."""

    kind = 'daemon'

    def __init__(self, name, pidfile, marker, log_path, user=None, held=None):
        self.name = name
        self.pidfile = pidfile
        self.marker = marker  # a string in the command line that guards against pid reuse
        self.log_path = log_path
        # The server writes its pidfile as its account: the pid counts only for a process of that
        # account (it could name a guest's QEMU, which a stop would then kill). Looked up when
        # asked: the account is made as the server first starts.
        self.user = user
        # [pid, start time] of the server root saw listening on its socket once it started: while
        # known, the server is that process and no other, whatever its pidfile says.
        self.held = held

    def pid(self):
        uid = _host.uid_of(self.user)
        if uid is None:
            return None
        if self.held is not None:
            return _host.held_process(self.held, uid)
        pid = _host.read_pidfile(self.pidfile)
        if _host.process_alive(pid, self.marker, uid):
            return pid
        # A lost, lying or planted pidfile: the process of the account listening on the socket.
        pid = _host.socket_owner(self.marker, uid)
        return pid if _host.process_alive(pid, self.marker, uid) else None

    def start(self, argv, user, group, timeout, notify, writable=(), umask=0o077):
        return _host.launch_daemon(argv, self.log_path, timeout, user=user, group=group, umask=umask)

    def stop(self, timeout):
        pid = self.pid()
        return _host.terminate(pid, self.marker, timeout, _host.uid_of(self.user)) if pid else 0.0

    def remove(self):
        return False


class SystemdSupervisor:
    """One unit per server, ivshmem-fleet-server-NAME.service, running it in the foreground."""

    kind = 'systemd'

    def __init__(self, name, pidfile, marker, log_path, user=None, held=None):
        self.name = name
        self.unit = 'ivshmem-fleet-server-%s.service' % name
        self.unit_path = os.path.join(UNIT_DIR, self.unit)
        self.marker = marker

    def _systemctl(self, *args):
        status, out, err = _host.run_program(['systemctl'] + list(args), SYSTEMCTL_TIMEOUT, user=None)
        return status, (out + err).strip()

    def pid(self):
        if not os.path.exists(self.unit_path):
            return None
        _rc, out = self._systemctl('show', '--property=MainPID', '--value', self.unit)
        pid = int(out) if out.isdigit() else 0
        return pid if _host.process_alive(pid, self.marker) else None

    def unit_text(self, argv, user, group, notify, writable=(), umask=0o077):
        """The unit. The server needs only its own directory, its memory and UNIX sockets:
        everything else is closed (``systemd-analyze security`` rates it SAFE; a test reads
        the score). ``writable``: the directories it writes (a missing one is skipped)."""
        return '\n'.join([
            '# Managed by ivshmem.fleet: changes here are overwritten.',
            '[Unit]', 'Description=ivshmem.fleet ivshmem server %s' % self.name, '',
            '[Service]', 'Type=%s' % ('notify' if notify else 'simple'), 'NotifyAccess=main',
            'User=%s' % user, 'Group=%s' % group,
            'ExecStart=%s' % ' '.join(shlex.quote(a) for a in argv),
            # A restarted server strands its clients; restarting still lets new guests in.
            'Restart=on-failure', 'RestartSec=1', 'TimeoutStartSec=30',
            'ProtectSystem=strict',
            'ReadWritePaths=%s' % ' '.join('-' + shlex.quote(path) for path in writable),
            'UMask=%04o' % umask,
        ] + HARDENING + ['', '[Install]', 'WantedBy=multi-user.target', ''])

    def start(self, argv, user, group, timeout, notify, writable=(), umask=0o077):
        if _host.write_file(self.unit_path, self.unit_text(argv, user, group, notify, writable, umask)):
            self._systemctl('daemon-reload')
        rc, out = self._systemctl('enable', '--now', self.unit)
        if rc != 0:
            _rc, journal = self._systemctl('status', '--no-pager', '--lines=5', self.unit)
            raise _host.HostError('systemctl enable --now %s failed: %s %s' % (self.unit, out, journal))
        return 0.0

    def stop(self, timeout):
        if os.path.exists(self.unit_path):
            self._systemctl('stop', self.unit)
        return 0.0

    def remove(self):
        if not os.path.exists(self.unit_path):
            return False
        self._systemctl('disable', '--now', self.unit)
        os.unlink(self.unit_path)
        self._systemctl('daemon-reload')
        return True


def supervisor_for(name, pidfile, marker, log_path, kind='auto', user=None, held=None):
    """``user``: the account the server runs as (its pidfile is trusted for that account's processes
    only); ``held``: [pid, start time] of the server root saw start (systemd knows its own)."""
    if kind == 'auto':
        kind = 'systemd' if _host.systemd_running() else 'daemon'
    cls = SystemdSupervisor if kind == 'systemd' else DaemonSupervisor
    return cls(name, pidfile, marker, log_path, user, held)
