# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A synchronous QMP client: protocol only, no policy.

Events that arrive while a command waits for its reply are queued, so a caller can
wait for them later (wait_event) without losing any. Every read has a deadline.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket
import struct
import time

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError


class QMPError(FleetError):
    """QEMU answered a command with an error, or the connection failed."""

    def __init__(self, message, error_class=None):
        super(QMPError, self).__init__(message)
        self.error_class = error_class


class QMPTimeout(QMPError):
    """No answer (or no awaited event) before the deadline."""


def event_seconds(event):
    """The host wall-clock time QEMU stamped on an event (seconds), or None."""
    stamp = (event or {}).get('timestamp') or {}
    return stamp.get('seconds', 0) + stamp.get('microseconds', 0) / 1e6 if stamp else None


class QMPClient:
    """One QMP connection in command mode. Use as a context manager."""

    def __init__(self, path, timeout=10.0):
        self.path = path
        self.timeout = timeout
        self.events = []
        self.greeting = None
        self._buffer = b''
        self._next_id = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
            deadline = time.monotonic() + timeout
            self.greeting = self._read_message(deadline)
            if 'QMP' not in self.greeting:
                raise QMPError('%s: no QMP greeting' % path)
            self.command('qmp_capabilities', timeout=timeout)
        except (OSError, ValueError) as exc:
            self.close()
            raise QMPError('%s: %s' % (path, exc))
        except QMPError:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def command(self, name, arguments=None, timeout=None, fd=None):
        """Execute one command and return its result; raises QMPError on an error reply.
        ``fd`` travels with the command (SCM_RIGHTS), as ``getfd`` and ``add-fd`` expect."""
        self._next_id += 1
        request = {'execute': name, 'id': self._next_id}
        if arguments:
            request['arguments'] = arguments
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        data = json.dumps(request).encode('utf-8') + b'\n'
        try:
            if fd is None:
                self._sock.sendall(data)
            else:
                sent = self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack('i', fd))])
                self._sock.sendall(data[sent:])
        except OSError as exc:
            raise QMPError('%s: %s: %s' % (self.path, name, exc))
        while True:
            message = self._read_message(deadline, what=name)
            if 'event' in message:
                self.events.append(message)
            elif message.get('id') == self._next_id:
                if 'error' in message:
                    error = message['error'] if isinstance(message['error'], dict) else {'desc': message['error']}
                    raise QMPError('%s: %s' % (name, error.get('desc')), error.get('class'))
                return message.get('return')

    def wait_event(self, names, timeout, predicate=None):
        """Return the first queued or arriving event named in ``names`` that matches."""
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if event.get('event') in names and (predicate is None or predicate(event)):
                    return self.events.pop(index)
            message = self._read_message(deadline, what='event %s' % '/'.join(names))
            if 'event' in message:
                self.events.append(message)

    def _read_message(self, deadline, what='greeting'):
        while b'\n' not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QMPTimeout('%s: no answer to %s within the timeout' % (self.path, what))
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as exc:
                raise QMPError('%s: %s' % (self.path, exc))
            if not chunk:
                raise QMPError('%s: QEMU closed the connection (waiting for %s)' % (self.path, what))
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b'\n', 1)
        try:
            message = json.loads(line.decode('utf-8'))
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            raise QMPError('%s: malformed message while waiting for %s: %r' % (self.path, what, line[:200]))
        return message
