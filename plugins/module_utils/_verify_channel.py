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
message from another run, from the other sender or of another step does not verify.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import hmac
import json
import os
import selectors
import socket
import time

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError

MAX_MESSAGE = 65536


class ChannelError(FleetError):
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


# Who sends what: each message names its sender and step inside what the HMAC covers, so a
# message is accepted only from the other side and at its step. A relay that reflects the
# source's own checksums back to it (both are sealed with one key) is no verdict.
SOURCE, DESTINATION = 'source', 'destination'
CHECKSUMS, VERDICT = 'checksums', 'verdict'
# Connections the destination holds at once while it waits for the source: idle or hostile ones
# beyond this are dropped, oldest first, and none of them holds up the others.
MAX_PENDING = 16


def _seal(key, run_id, sender, step, message):
    body = json.dumps(dict(message, run_id=run_id, sender=sender, step=step), sort_keys=True)
    mac = hmac.new(bytes.fromhex(key), body.encode('utf-8'), hashlib.sha256).hexdigest()
    return (json.dumps({'body': body, 'mac': mac}) + '\n').encode('utf-8')


def _open(key, line, run_id, sender, step):
    try:
        envelope = json.loads(line.decode('utf-8'))
        body, mac = envelope['body'], envelope['mac']
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ChannelError('malformed message')
    want = hmac.new(bytes.fromhex(key), str(body).encode('utf-8'), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, str(mac)):
        raise ChannelError('message does not verify (wrong key)')
    message = json.loads(body)
    if not isinstance(message, dict) or message.get('run_id') != run_id:
        raise ChannelError('message of another run')
    if (message.get('sender'), message.get('step')) != (sender, step):
        raise ChannelError('message of the %s at step %s where the %s\'s %s was due (reflected?)' % (
            message.get('sender'), message.get('step'), sender, step))
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
    """The destination's end: listen first, then take the source's checksums, answer a verdict."""

    def __init__(self, uri, key, run_id):
        self.key, self.run_id = key, run_id
        family, self.address = endpoint(uri)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_UNIX and os.path.exists(self.address):
            os.unlink(self.address)
        try:
            self.sock.bind(self.address)
        except OSError as exc:
            self.sock.close()
            raise ChannelError('cannot listen on %s for the source: %s' % (self.address, exc))
        self.sock.listen(64)
        self.conn = None

    def receive(self, timeout):
        """The source's message (verified). All connections are read at once: one that sends
        nothing, or garbage, neither delays the source's nor is answered."""
        deadline = time.monotonic() + timeout
        pending = {}  # socket -> bytes read so far
        selector = selectors.DefaultSelector()
        self.sock.setblocking(False)
        selector.register(self.sock, selectors.EVENT_READ)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChannelError('the source sent no checksums within %.0f s' % timeout)
                for ready, _mask in selector.select(min(remaining, 1.0)):
                    sock = ready.fileobj
                    if sock is self.sock:
                        self._accept(selector, pending)
                        continue
                    message = self._read(selector, pending, sock)
                    if message is not None:
                        self.conn = sock
                        del pending[sock]
                        selector.unregister(sock)
                        sock.setblocking(True)
                        return message
        finally:
            for sock in pending:
                sock.close()
            selector.close()

    def _accept(self, selector, pending):
        try:
            conn, _peer = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        if len(pending) >= MAX_PENDING:
            oldest = next(iter(pending))
            selector.unregister(oldest)
            oldest.close()
            del pending[oldest]
        pending[conn] = b''
        selector.register(conn, selectors.EVENT_READ)

    def _read(self, selector, pending, sock):
        """The source's verified message once a whole line came; None meanwhile. A connection whose
        line does not verify (another key, run, sender or step), or that closes, is dropped."""
        try:
            chunk = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            chunk = b''
        data = pending[sock] + chunk
        if chunk and b'\n' not in data and len(data) <= MAX_MESSAGE:
            pending[sock] = data
            return None
        try:
            if not chunk or len(data.split(b'\n', 1)[0]) > MAX_MESSAGE:
                raise ChannelError('closed or too long')
            return _open(self.key, data.split(b'\n', 1)[0], self.run_id, SOURCE, CHECKSUMS)
        except ChannelError:
            selector.unregister(sock)
            sock.close()
            del pending[sock]
            return None

    def answer(self, message):
        """The verdict: ``ok`` must be true or false, said explicitly."""
        if self.conn is not None:
            try:
                self.conn.sendall(_seal(self.key, self.run_id, DESTINATION, VERDICT, dict(message, ok=message['ok'] is True)))
            except OSError:
                pass  # the source resolves through the journal

    def close(self):
        for sock in (self.conn, self.sock):
            if sock is not None:
                sock.close()
        if isinstance(self.address, str) and os.path.exists(self.address):
            os.unlink(self.address)


def exchange(uri, key, run_id, message, timeout):
    """The source's end: send ``message``, return the destination's verified verdict (its ``ok``
    true or false). Anything else - a reflected message, no answer - raises ChannelError: the
    source then stays paused, since the destination may run."""
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
        conn.sendall(_seal(key, run_id, SOURCE, CHECKSUMS, message))
        verdict = _open(key, _read_line(conn, deadline), run_id, DESTINATION, VERDICT)
    except OSError as exc:
        raise ChannelError(str(exc))
    finally:
        conn.close()
    if not isinstance(verdict.get('ok'), bool):
        raise ChannelError('the verdict says neither yes nor no')
    return verdict
