# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The control socket: status for anyone, hold, release and admit for root or the admin group."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import selectors
import time

from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import (
    ControlError,
    encode_response,
    read_request,
)
from ansible_collections.ivshmem.fleet.plugins.module_utils._rules import PROGRAM_NAME_RE
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.clients import peer_credentials
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.config import VERSION

MAX_CONTROLS = 64
CONTROL_IDLE = 2.0  # seconds a control connection may take to send its request and read the reply
_CONTROL_LIMIT = 4096


class ControlConnection:
    """One control connection: the request read so far, then the response being written."""

    def __init__(self, sock):
        self.sock = sock
        try:
            _pid, self.uid, self.gid = peer_credentials(sock)
        except OSError:
            self.uid = self.gid = None
        self.opened = time.monotonic()
        self.request = bytearray()
        self.response = None


def request_uid(request, command, required=False):
    uid = request.get('uid')
    if uid is None and not required:
        return None
    if isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
        raise ControlError('%s: uid must be the guest\'s account uid' % command)
    return uid


class Control:
    """The control socket of ``loop.IvshmemServer`` (mixed into it: uses its selector, ``_accept``,
    ``_know`` and its state for status)."""

    def _accept_control(self, listener, _mask):
        while True:
            sock = self._accept(listener, self._accept_control)
            if sock is None:
                return
            if len(self._controls) >= MAX_CONTROLS:
                # Make room by closing the oldest: connections held open cannot lock status out.
                self._close_control(min(self._controls.values(), key=lambda c: c.opened))
            self._controls[sock.fileno()] = ControlConnection(sock)
            self.selector.register(sock, selectors.EVENT_READ, self._control_event)

    def _control_event(self, sock, _mask):
        control = self._controls.get(sock.fileno())
        if control is None:
            return  # closed earlier in the same round (to make room for a newer connection)
        if control.response is None:
            try:
                data = sock.recv(_CONTROL_LIMIT)
            except BlockingIOError:
                return
            except OSError:
                data = b''
            control.request.extend(data)
            if not data:
                self._close_control(control)
                return
            if b'\n' not in control.request and len(control.request) < _CONTROL_LIMIT:
                return
            try:
                response = {'return': self._control(read_request(bytes(control.request)), control)}
            except ControlError as exc:
                response = {'error': str(exc)}
            control.response = encode_response(response)
            self.selector.modify(sock, selectors.EVENT_WRITE, self._control_event)
        try:
            sent = sock.send(control.response)
        except BlockingIOError:
            return
        except OSError:
            sent = len(control.response)
        control.response = control.response[sent:]
        if not control.response:
            self._close_control(control)

    def _close_control(self, control):
        self.selector.unregister(control.sock)
        del self._controls[control.sock.fileno()]
        control.sock.close()

    def _control(self, request, peer):
        command = request.get('command')
        if command == 'status':
            return self.status()
        admin = peer.uid == 0 or (self.config.admin_gid is not None and peer.gid == self.config.admin_gid)
        if command in ('hold', 'release', 'admit') and not admin:
            # Admission gates migration (peers must not attach early) and decides who maps the
            # memory: only root or the admin group moves it, never the server's own account nor a guest's.
            raise ControlError('%s needs root or the admin group (the request came from uid %s)' % (command, peer.uid))
        if command == 'admit':
            guest = request.get('guest')
            if not isinstance(guest, str) or not PROGRAM_NAME_RE.match(guest):
                raise ControlError('admit needs a valid guest name')
            self._know(guest, request_uid(request, 'admit', required=True))
            self.log('guest %s admitted (uid %d)' % (guest, self.accounts[guest]))
            return self.status()
        if command == 'hold':
            master, uid = request.get('master'), request_uid(request, 'hold')
            if not isinstance(master, str) or not PROGRAM_NAME_RE.match(master):
                raise ControlError('hold needs a valid master name')
            if uid is not None:
                self._know(master, uid)
            if master not in self.accounts:
                raise ControlError('hold %s: its account is unknown here (give its uid)' % master)
            self.hold = master
            self.log('admission held for %s' % master)
            return self.status()
        if command == 'release':
            self.hold = None
            self.log('admission released')
            return self.status()
        raise ControlError('unknown command %r' % command)

    def status(self):
        cfg = self.config
        clients = sorted((c.status() for c in self.clients.values()), key=lambda c: c['id'])
        return {
            'implementation': 'builtin', 'version': VERSION, 'pid': os.getpid(),
            'socket': cfg.socket_path, 'control': cfg.control_path, 'memory': cfg.memory_path,
            'size': cfg.size, 'vectors': cfg.vectors, 'hold': self.hold, 'pins': cfg.pins,
            'accounts': self.accounts, 'admit_accounts_only': cfg.admit_accounts_only,
            'max_clients': self.max_clients, 'max_backlog': self.max_backlog, 'fd_limit': self.fd_limit,
            'sender': self.sender.name,
            'refused': self.refused, 'refusals': list(self.refusals), 'dropped': self.dropped, 'queued': sum(c['backlog'] for c in clients),
            'started_at': round(self.started_at, 3), 'clients': clients,
        }
