# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""How the builtin server sends queued protocol messages to a client: one ``sendmsg`` system call
per message (portable), or a client's whole turn in one ``sendmmsg`` call (Linux, through ctypes).
Each message is encoded once, in the form its sender needs, and sent to every client that needs
it. Standard library only: part of the server's program (kept apart from the protocol module,
which the modules import, so that they do not load ctypes).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import itertools
import os
import socket
import struct

try:  # the batch sender's system call; without it, one call per message
    import ctypes
except (ImportError, MemoryError):  # no _ctypes, or a sandbox that refuses its trampolines
    ctypes = None

from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_protocol import FD, MESSAGE


class _MsgEncoding:
    """Messages that carry one value, each with one of ``fds`` (None: no fd), encoded once for
    ``socket.sendmsg``: a message is ``(buffers, ancillary)``.

    The server sends each encoded message to every client that needs it. The value may be set
    after encoding: a newcomer's eventfds are encoded before its ID is known.
    """

    def __init__(self, value, fds):
        self._payload = [MESSAGE.pack(value)]  # shared by the messages, so set_value reaches them all
        self.messages = [(self._payload, [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, FD.pack(fd))])
                         for fd in fds]

    def set_value(self, value):
        self._payload[0] = MESSAGE.pack(value)


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
        cmsg_space, cmsg_len = socket.CMSG_SPACE(FD.size), socket.CMSG_LEN(FD.size)
        iov_at = ctypes.sizeof(ctypes.c_void_p) * 2  # after the value, pointer-aligned
        controls_at = iov_at + self._IOVEC.size
        self._block = block = ctypes.create_string_buffer(controls_at + cmsg_space * len(fds))
        self.set_value(value)
        base = ctypes.addressof(block)
        self._IOVEC.pack_into(block, iov_at, base, MESSAGE.size)
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
        MESSAGE.pack_into(self._block, 0, value)


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
