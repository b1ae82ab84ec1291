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
import errno
import itertools
import os
import socket
import struct

try:  # the batch sender's system call; without it, one call per message
    import ctypes
except (ImportError, MemoryError):  # no _ctypes, or a sandbox that refuses its trampolines
    ctypes = None

PROTOCOL_VERSION = 0
SHM_MARKER = -1
MAX_VECTORS = 64
MAX_PEER_ID = 65535
_MSG = struct.Struct('<q')
_FD = struct.Struct('i')


class ProtocolError(Exception):
    """The peer broke the protocol or went away mid-message."""


class _MsgEncoding:
    """Messages that carry one value, each with one of ``fds`` (None: no fd), encoded once for
    ``socket.sendmsg``: a message is ``(buffers, ancillary)``.

    The server sends each encoded message to every client that needs it. The value may be set
    after encoding: a newcomer's eventfds are encoded before its ID is known.
    """

    def __init__(self, value, fds):
        self._payload = [_MSG.pack(value)]  # shared by the messages, so set_value reaches them all
        self.messages = [(self._payload, [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FD.pack(fd))])
                         for fd in fds]

    def set_value(self, value):
        self._payload[0] = _MSG.pack(value)


class MessageSender:
    """Sends queued messages to a client, one ``sendmsg`` system call per message.

    The portable path. Each message needs a socket message of its own either way: QEMU's device
    reads one 8-byte message at a time and keeps only the first fd that came with it.
    """

    name = 'sendmsg'
    encoding = _MsgEncoding

    def encode(self, value, fds=(None,)):
        """An encoding (``messages``, ``set_value``) of ``value`` with each of ``fds``."""
        return self.encoding(value, list(fds))

    def send(self, sock, queue, count):
        """Send up to ``count`` of ``queue``'s first entries (``(message, owner)``) without blocking.

        Returns ``(sent, error)``: how many the socket took, and the OSError that stopped it (None
        when it took them all or was merely full).
        """
        sendmsg = sock.sendmsg
        sent = 0
        for (buffers, ancillary), _owner in itertools.islice(queue, count):
            try:
                # A UNIX stream socket takes a message this small whole or not at all.
                sendmsg(buffers, ancillary, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return sent, None
            except OSError as exc:
                return sent, exc
            sent += 1
        return sent, None


if ctypes is not None:
    class _MsgHdr(ctypes.Structure):
        """``struct msghdr``."""

        _fields_ = [('name', ctypes.c_void_p), ('namelen', ctypes.c_uint32), ('iov', ctypes.c_void_p),
                    ('iovlen', ctypes.c_size_t), ('control', ctypes.c_void_p), ('controllen', ctypes.c_size_t),
                    ('flags', ctypes.c_int)]

    class _MMsgHdr(ctypes.Structure):
        """``struct mmsghdr`` (Linux): a ``struct msghdr``, then the length the kernel sent."""

        _fields_ = [('hdr', _MsgHdr), ('sent', ctypes.c_uint)]


class _MMsgEncoding:
    """The same for ``sendmmsg``: a message is ``(its struct mmsghdr as bytes, this encoding)``.

    The header points into this encoding's block (the value, one iovec, a control message per
    fd); the message's second item keeps the block alive while the message waits in a queue.
    Headers are stamped from one template (a spare client's 64 are encoded while the server is
    otherwise idle, but on 2 cores that time is the guests' too).
    """

    _IOVEC = struct.Struct('@PN')  # struct iovec: base, length
    # struct cmsghdr (length, level, type) and the fd at CMSG_LEN(0)
    _CMSG = struct.Struct('@Nii%dxi' % (socket.CMSG_LEN(0) - struct.calcsize('@Nii')))
    _POINTER = struct.Struct('@P')
    _SIZE = struct.Struct('@N')

    def __init__(self, value, fds):
        cmsg_space, cmsg_len = socket.CMSG_SPACE(_FD.size), socket.CMSG_LEN(_FD.size)
        iov_at = ctypes.sizeof(ctypes.c_void_p) * 2  # after the value, pointer-aligned
        controls_at = iov_at + self._IOVEC.size
        self._block = block = ctypes.create_string_buffer(controls_at + cmsg_space * len(fds))
        self.set_value(value)
        base = ctypes.addressof(block)
        self._IOVEC.pack_into(block, iov_at, base, _MSG.size)
        template = bytes(_MMsgHdr(_MsgHdr(None, 0, base + iov_at, 1, None, 0, 0)))
        control_field, length_field = _MsgHdr.control.offset, _MsgHdr.controllen.offset
        pack_cmsg, pack_pointer, pack_size = self._CMSG.pack_into, self._POINTER.pack_into, self._SIZE.pack_into
        self.messages = []
        for index, fd in enumerate(fds):
            if fd is None:
                self.messages.append((template, self))
                continue
            control = controls_at + cmsg_space * index
            pack_cmsg(block, control, cmsg_len, socket.SOL_SOCKET, socket.SCM_RIGHTS, fd)
            header = bytearray(template)
            pack_pointer(header, control_field, base + control)
            pack_size(header, length_field, cmsg_len)
            self.messages.append((bytes(header), self))

    def set_value(self, value):
        _MSG.pack_into(self._block, 0, value)


class BatchSender(MessageSender):
    """Sends up to ``count`` queued messages in one ``sendmmsg`` system call (Linux).

    The kernel still makes one socket message per entry, each with its own fd, as separate
    ``sendmsg`` calls would; what goes is the interpreter's cost per message, which made a
    Python server slower than QEMU's C one on long handshakes. Made by :func:`best_sender` only
    where the C library has ``sendmmsg``.
    """

    name = 'sendmmsg'
    encoding = _MMsgEncoding

    def __init__(self, sendmmsg, most):
        self._sendmmsg = sendmmsg
        self._most = most
        # The kernel writes each entry's sent length back: the array is this writable buffer.
        self._headers = ctypes.create_string_buffer(ctypes.sizeof(_MMsgHdr) * most)

    def send(self, sock, queue, count):
        headers = b''.join([message[0] for message, _owner in itertools.islice(queue, min(count, self._most))])
        ctypes.memmove(self._headers, headers, len(headers))
        sent = self._sendmmsg(sock.fileno(), self._headers, len(headers) // ctypes.sizeof(_MMsgHdr), socket.MSG_DONTWAIT)
        if sent >= 0:
            # Fewer than asked: the socket filled up, or a message failed after others went (the
            # kernel reports that error on the next call, which the client's next turn makes).
            return sent, None
        code = ctypes.get_errno()
        if code in (errno.EAGAIN, errno.EWOULDBLOCK):
            return 0, None
        return 0, OSError(code, os.strerror(code))


def best_sender(batch=True, most=1024):
    """The batch sender (up to ``most`` messages a call) where the C library has ``sendmmsg``
    and ``batch`` is asked, else the portable one."""
    if batch and ctypes is not None:
        try:
            function = ctypes.CDLL(None, use_errno=True).sendmmsg
        except (AttributeError, OSError):  # not Linux, or an old C library
            function = None
        if function is not None:
            function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
            function.restype = ctypes.c_int
            return BatchSender(function, most)
    return MessageSender()


def send_message(sock, value, fd=None, flags=0):
    """Send one message; ``flags`` lets a sender send without blocking."""
    buffers = [_MSG.pack(value)]
    ancillary = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FD.pack(fd))]
    sent = sock.sendmsg(buffers, ancillary, flags)
    if sent != _MSG.size:
        raise ProtocolError('short send (%d of %d bytes)' % (sent, _MSG.size))


def receive_message(sock):
    """Receive one message: (value, fd or None). Raises ProtocolError on EOF."""
    fds = array.array('i')
    data, ancdata, msg_flags, _addr = sock.recvmsg(_MSG.size, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - (len(cdata) % fds.itemsize)])
    if not data:
        for fd in fds:
            os.close(fd)
        raise ProtocolError('server closed the connection')
    if len(data) != _MSG.size or msg_flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ProtocolError('malformed message (%d bytes)' % len(data))
    extra = list(fds[1:])
    for fd in extra:
        os.close(fd)
    return _MSG.unpack(data)[0], (fds[0] if fds else None)


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
