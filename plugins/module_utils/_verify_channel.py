# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The verification channel: the source hands its checksums straight to the destination.

Without it the controller relays them, and every relay is a module call (seconds on a slow
host) while the master is out of service. One TCP connection per move, from the source to the
destination's migration address on the migration port + 1 (or a UNIX socket beside a unix:
migration URI). Each message is one JSON line with an HMAC-SHA256 over it, keyed with a random
secret the engine gives both hosts for this run only: nothing else can forge a verdict, and a
message from another run does not verify.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import hmac
import json
import os
import socket
import time

MAX_MESSAGE = 65536


class ChannelError(Exception):
    """The other side did not answer, or answered something that does not verify."""


def endpoint(uri):
    """(family, address) of the channel for a migration URI."""
    kind, _sep, rest = uri.partition(':')
    if kind == 'unix':
        return socket.AF_UNIX, rest + '.verify'
    if kind == 'tcp':
        host, _sep, port = rest.rpartition(':')
        return socket.AF_INET6 if ':' in host.strip('[]') else socket.AF_INET, (host.strip('[]'), int(port) + 1)
    raise ChannelError('no verification channel for migration URI %r' % uri)


def _seal(key, message):
    body = json.dumps(message, sort_keys=True)
    mac = hmac.new(bytes.fromhex(key), body.encode('utf-8'), hashlib.sha256).hexdigest()
    return (json.dumps({'body': body, 'mac': mac}) + '\n').encode('utf-8')


def _open(key, line, run_id):
    try:
        envelope = json.loads(line.decode('utf-8'))
        body, mac = envelope['body'], envelope['mac']
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ChannelError('malformed message')
    want = hmac.new(bytes.fromhex(key), body.encode('utf-8'), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, str(mac)):
        raise ChannelError('message does not verify (wrong key)')
    message = json.loads(body)
    if message.get('run_id') != run_id:
        raise ChannelError('message of another run')
    return message


def _read_line(conn, deadline):
    data = b''
    while b'\n' not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ChannelError('no message within the timeout')
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(4096)
        except socket.timeout:
            continue
        except OSError as exc:
            raise ChannelError(str(exc))
        if not chunk:
            raise ChannelError('connection closed')
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise ChannelError('message too long')
    return data.split(b'\n', 1)[0]


class Listener:
    """The destination's end: listen first, then accept the source's checksums, answer a verdict."""

    def __init__(self, uri, key, run_id):
        self.key, self.run_id = key, run_id
        family, self.address = endpoint(uri)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_UNIX and os.path.exists(self.address):
            os.unlink(self.address)
        self.sock.bind(self.address)
        self.sock.listen(4)
        self.conn = None

    def receive(self, timeout):
        """The source's message (verified). Connections that do not verify are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelError('the source sent no checksums within %.0f s' % timeout)
            self.sock.settimeout(remaining)
            try:
                conn, _peer = self.sock.accept()
            except socket.timeout:
                continue
            try:
                message = _open(self.key, _read_line(conn, min(deadline, time.monotonic() + 10)), self.run_id)
            except (ChannelError, OSError):
                conn.close()  # not the source of this run, or it went away: keep listening
                continue
            self.conn = conn
            return message

    def answer(self, message):
        if self.conn is not None:
            try:
                self.conn.sendall(_seal(self.key, dict(message, run_id=self.run_id)))
            except OSError:
                pass  # the source resolves through the journal

    def close(self):
        for sock in (self.conn, self.sock):
            if sock is not None:
                sock.close()
        if isinstance(self.address, str) and os.path.exists(self.address):
            os.unlink(self.address)


def exchange(uri, key, run_id, message, timeout):
    """The source's end: send ``message``, return the destination's verified answer."""
    family, address = endpoint(uri)
    deadline = time.monotonic() + timeout
    while True:
        conn = socket.socket(family, socket.SOCK_STREAM)
        try:
            conn.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))
            conn.connect(address)
            break
        except OSError as exc:
            conn.close()
            if time.monotonic() >= deadline:
                raise ChannelError('cannot reach the destination at %s: %s' % (address, exc))
            time.sleep(0.1)
    try:
        conn.sendall(_seal(key, dict(message, run_id=run_id)))
        return _open(key, _read_line(conn, deadline), run_id)
    except OSError as exc:
        raise ChannelError(str(exc))
    finally:
        conn.close()
