# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The ivshmem server wire protocol (docs/specs/ivshmem-spec.rst in QEMU).

One-way, server to client, over a UNIX stream socket. Every message is one
8-byte little-endian signed integer, optionally carrying exactly one file
descriptor in SCM_RIGHTS. Standard library only: this file is also shipped
to managed hosts inside the builtin server.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import array
import os
import socket
import struct

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError

PROTOCOL_VERSION = 0
SHM_MARKER = -1
MAX_VECTORS = 64
MAX_PEER_ID = 65535
MESSAGE = struct.Struct('<q')  # every message: one 8-byte little-endian value
FD = struct.Struct('i')  # the fd it may carry, in SCM_RIGHTS


class ProtocolError(FleetError):
    """The peer broke the protocol or went away mid-message."""


def send_message(sock, value, fd=None, flags=0):
    """Send one message; ``flags`` lets a sender send without blocking."""
    buffers = [MESSAGE.pack(value)]
    ancillary = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, FD.pack(fd))]
    sent = sock.sendmsg(buffers, ancillary, flags)
    if sent != MESSAGE.size:
        raise ProtocolError('short send (%d of %d bytes)' % (sent, MESSAGE.size))


def receive_message(sock):
    """Receive one message: (value, fd or None). Raises ProtocolError on EOF."""
    fds = array.array('i')
    data, ancdata, msg_flags, _addr = sock.recvmsg(MESSAGE.size, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - (len(cdata) % fds.itemsize)])
    if not data:
        for fd in fds:
            os.close(fd)
        raise ProtocolError('server closed the connection')
    if len(data) != MESSAGE.size or msg_flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ProtocolError('malformed message (%d bytes)' % len(data))
    extra = list(fds[1:])
    for fd in extra:
        os.close(fd)
    return MESSAGE.unpack(data)[0], (fds[0] if fds else None)


class ClientState:
    """What a client learns from the server: its ID, the memory and everyone's eventfds."""

    def __init__(self):
        self.version = None
        self.peer_id = None
        self.shm_fd = None
        self.peers = {}  # peer id -> list of eventfds, one per vector (own ID included)

    def apply(self, value, fd):
        """Fold one message into the state; returns the peer ID that left, if one did."""
        if self.version is None:
            if fd is not None or value != PROTOCOL_VERSION:
                raise ProtocolError('unsupported protocol version %r' % value)
            self.version = value
        elif self.peer_id is None:
            if fd is not None or not 0 <= value <= MAX_PEER_ID:
                raise ProtocolError('bad client ID %r' % value)
            self.peer_id = value
        elif self.shm_fd is None:
            if value != SHM_MARKER or fd is None:
                raise ProtocolError('expected the shared-memory fd, got %r' % value)
            self.shm_fd = fd
        elif fd is None:
            for vector_fd in self.peers.pop(value, []):
                os.close(vector_fd)
            return value
        else:
            self.peers.setdefault(value, []).append(fd)
        return None

    def close(self):
        for fds in self.peers.values():
            for fd in fds:
                os.close(fd)
        self.peers = {}
        if self.shm_fd is not None:
            os.close(self.shm_fd)
            self.shm_fd = None


def connect_client(path, vectors, timeout):
    """Connect as a client and read the handshake until the own vectors arrived.

    Returns (socket, ClientState). The caller owns both. Note that a client takes a
    peer ID: never connect one before the master.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    state = ClientState()
    try:
        sock.connect(path)
        while state.peer_id is None or len(state.peers.get(state.peer_id, [])) < vectors:
            value, fd = receive_message(sock)
            state.apply(value, fd)
    except Exception:
        sock.close()
        state.close()
        raise
    return sock, state
