# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""One connected guest: who it is, its eventfds and the messages it has yet to read."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import os
import socket
import struct
import time

CLIENT_QUANTUM = 64  # messages sent to one client per turn
HANDSHAKE_QUANTUM = 512  # the same while its handshake is not out (a socket takes about 278)
UNREAD = object()


def guest_name_of(pid):
    """The QEMU ``-name`` of a process, or None (not QEMU, gone, nameless, or no pid). Shown in
    status for a client with no account of ours; never trusted (any process may claim any name)."""
    if pid <= 0:
        return None
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            argv = handle.read().split(b'\0')
    except OSError:
        return None
    for index, arg in enumerate(argv[:-1]):
        if arg in (b'-name', b'--name'):
            for part in argv[index + 1].decode('utf-8', 'replace').split(','):
                if part.startswith('guest='):
                    return part[len('guest='):]
                if '=' not in part:
                    return part
    return None


def peer_credentials(sock):
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize('3i'))
    return struct.unpack('3i', creds)


class Client:
    """One connected guest: its ID, its eventfds and the messages it has yet to read.

    The server never waits for a client: what the client's socket cannot take now waits in
    ``outbox`` and goes out as the socket becomes writable. A queued message that carries
    another client's eventfd holds that eventfd open (``refs``), even after its owner left,
    until the message is sent or discarded.
    """

    def __init__(self, sock, peer_id, pid, uid, name, eventfds, messages):
        self.sock = sock
        self.fileno = sock.fileno()
        self.peer_id = peer_id
        self.pid = pid
        self.uid = uid
        self._name = name  # UNREAD: read from /proc when first asked (not on the join's path)
        self._from_command_line = name is UNREAD
        self.eventfds = eventfds
        # Encoded once, sent to every peer: the client's vectors (its ID with an eventfd each),
        # then its ID alone (its departure, and its own ID in its handshake).
        self.vectors, self.departure = messages[:-1], messages[-1]
        self.announced = False  # whether other clients were told of it (and so must hear it left)
        self.outbox = collections.deque()  # (encoded message, owner of the fd it carries or None)
        self.refs = 0
        self.gone = False
        self.watching_writes = False
        self.pinned = False  # its ID is pinned to its name
        # Gone but kept in Server.absent: its eventfds outlive the connection (closed at shutdown).
        self.kept = False
        self.handshake_left = 0
        self.connected_at = time.time()

    @property
    def name(self):
        if self._name is UNREAD:
            self._name = guest_name_of(self.pid)
        return self._name

    def status(self):
        return {'id': self.peer_id, 'pid': self.pid, 'uid': self.uid, 'name': self.name,
                # 'account': the name of the account it runs as; 'command line': what it calls itself.
                'name_from': 'command line' if self._from_command_line else 'account',
                'connected_at': round(self.connected_at, 3), 'backlog': len(self.outbox),
                'handshake_done': self.handshake_left == 0}

    def release(self):
        """A queued message carrying this client's eventfds is gone (sent or discarded)."""
        self.refs -= 1
        if self.gone and not self.refs:
            self.close_eventfds()

    def close_eventfds(self, force=False):
        if self.kept and not force:
            return
        for fd in self.eventfds:
            os.close(fd)
        self.eventfds = []
