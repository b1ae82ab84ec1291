# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""ivshmem.fleet's ivshmem server: a production replacement for QEMU's contrib ivshmem-server.

Wire-compatible with ivshmem-doorbell and a drop-in for the upstream options
(-S -M -m -l -n -F -p -v). On top of upstream it never refuses or drops a healthy
client: messages a client's socket cannot take yet wait in a per-client queue, and
only a client that stops reading (a backlog beyond --max-backlog) is dropped. It
serves as many clients as the fd limit allows, hands out IDs never-used first then
least recently freed, knows guests by their account (--account NAME=UID, matched with
SO_PEERCRED: a process cannot choose it, unlike its -name) to pin their IDs, admit only
them (--admit-accounts-only; root adds a guest's account with the control request
"admit") and hold admission for a master, answers status queries on a control socket, and
recovers from a stale socket.

Standard library only (Python >= 3.10 for os.eventfd): the modules ship this
file to managed hosts inside a zipapp, and the tests run it directly.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import collections
import errno
import gc
import itertools
import os
import re
import resource
import select
import selectors
import signal
import socket
import stat
import struct
import sys
import time

from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_protocol import (
    MAX_PEER_ID,
    MAX_VECTORS,
    PROTOCOL_VERSION,
    SHM_MARKER,
)
from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_send import best_sender
from ansible_collections.ivshmem.fleet.plugins.module_utils._sizes import parse_size, round_up_power_of_two
from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import (
    ControlError,
    encode_response,
    read_request,
)

VERSION = '1.0.0'
DEFAULT_SOCKET = '/tmp/ivshmem_socket'
DEFAULT_SHM_NAME = 'ivshmem'
DEFAULT_SIZE = 4 << 20
_RESERVED_FDS = 128  # listeners, control connections, the memory, the log
_BACKLOG_FLOOR = 65536  # messages: see --max-backlog
_RETRY_INTERVAL = 0.02
_ACCEPT_PAUSE = 0.2
_MAX_CONTROLS = 64
_CONTROL_IDLE = 2.0  # seconds a control connection may take to send its request and read the reply
_ROUND_SLICE = 0.001  # seconds of admissions and sends per loop round (see serve)
_CLIENT_QUANTUM = 64  # messages sent to one client per turn
_HANDSHAKE_QUANTUM = 512  # the same while its handshake is not out (a socket takes about 278)
_COLLECT_IDLE = 1.0  # seconds between looks for a moment to collect garbage (see serve)
_COLLECT_BUSY = 30.0  # seconds after which garbage is collected even if no queue is ever empty
_UNREAD = object()
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}\Z')
_CONTROL_LIMIT = 4096
_REFUSALS_KEPT = 32  # the latest refusals, in status (see _admit)


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


def _peer_credentials(sock):
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize('3i'))
    return struct.unpack('3i', creds)


class ServerError(Exception):
    """A fatal setup error, reported to whoever started the server."""


def check_accounts(accounts):
    """{name: uid} must name each uid once: the uid is how a client is told apart."""
    seen = {}
    for name, uid in sorted(accounts.items()):
        if uid in seen:
            raise ServerError('--account: uid %d given to both %s and %s; each guest needs its own account' % (
                uid, seen[uid], name))
        seen[uid] = name
    return dict((uid, name) for name, uid in accounts.items())


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
        self._name = name  # _UNREAD: read from /proc when first asked (not on the join's path)
        self._from_command_line = name is _UNREAD
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
        if self._name is _UNREAD:
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


class IdAllocator:
    """Peer IDs: a pinned name gets its ID; others get a never-used ID, else the least recently freed.

    A departed peer's ID comes back last, so a doorbell still aimed at it (from a guest that
    has not processed the departure yet) rings nobody rather than the next newcomer.
    """

    def __init__(self, pins, highest=MAX_PEER_ID):
        self.pins = dict(pins)
        self._highest = highest
        self._pinned = set(self.pins.values())
        self._in_use = set()
        self._next_fresh = 0
        self._freed = collections.OrderedDict()  # oldest first

    def take(self, name):
        """An ID for a guest of this name (None for an unnamed one), or None if there is none."""
        if name in self.pins:
            peer_id = self.pins[name]
            if peer_id in self._in_use:
                return None
        else:
            peer_id = self._fresh()
            if peer_id is None:
                if not self._freed:
                    return None
                peer_id = self._freed.popitem(last=False)[0]
        self._in_use.add(peer_id)
        return peer_id

    def _fresh(self):
        while self._next_fresh <= self._highest:
            peer_id = self._next_fresh
            self._next_fresh += 1
            if peer_id not in self._pinned:
                return peer_id
        return None

    def pinned(self, peer_id):
        return peer_id in self._pinned

    def free(self, peer_id):
        self._in_use.discard(peer_id)
        if peer_id not in self._pinned:
            self._freed.pop(peer_id, None)
            self._freed[peer_id] = None


class _Control:
    """One control connection: the request read so far, then the response being written."""

    def __init__(self, sock):
        self.sock = sock
        try:
            _pid, self.uid, self.gid = _peer_credentials(sock)
        except OSError:
            self.uid = self.gid = None
        self.opened = time.monotonic()
        self.request = bytearray()
        self.response = None


class Config:
    """The server's settings, from the command line."""

    def __init__(self, args):
        self.socket_path = args.socket
        self.control_path = args.control or args.socket + '.ctl'
        self.shm_name = args.shm_name
        self.shm_dir = args.shm_dir
        self.size = round_up_power_of_two(args.size)
        self.vectors = args.vectors
        self.pidfile = args.pidfile
        self.verbose = args.verbose
        self.pins = dict(args.pin or [])
        self.accounts = dict(args.account or [])  # guest name -> the uid it runs as
        self.admit_accounts_only = args.admit_accounts_only
        self.hold = args.hold
        self.max_clients = args.max_clients
        self.max_backlog = args.max_backlog
        self.uid = args.owner
        self.gid = args.group
        self.socket_mode = args.socket_mode
        self.memory_mode = args.memory_mode
        self.keep_memory = args.keep_memory
        self.admin_gid = args.admin_group
        self.batch_send = not args.no_sendmmsg
        taken = {}
        for name, peer_id in self.pins.items():
            if peer_id in taken:
                raise ServerError('--pin: ID %d pinned to both %s and %s' % (peer_id, taken[peer_id], name))
            taken[peer_id] = name
        check_accounts(self.accounts)
        for option, name in [('--pin', n) for n in sorted(self.pins)] + [('--hold', self.hold)]:
            if name is not None and name not in self.accounts:
                raise ServerError('%s %s: no --account %s=UID; a guest is known by its account, never by '
                                  'the name it gives itself' % (option, name, name))

    @property
    def memory_path(self):
        return os.path.join(self.shm_dir or '/dev/shm', self.shm_name)


def _request_uid(request, command, required=False):
    uid = request.get('uid')
    if uid is None and not required:
        return None
    if isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
        raise ControlError('%s: uid must be the guest\'s account uid' % command)
    return uid


class IvshmemServer:
    """One shared memory, its listening socket, its control socket and its clients."""

    def __init__(self, config, log):
        self.config = config
        self.log = log
        self.clients = {}  # socket fd -> Client
        # Pinned IDs whose guest left: {ID: its last Client}. Its departure is not announced and
        # its eventfds stay, so the same ID comes back with the same vectors, unannounced.
        # QEMU's ivshmem (7.2, hw/misc/ivshmem.c) frees a peer's vector table when told the
        # peer left (close_peer_eventfds) and writes into the freed table when the same ID joins
        # again (process_msg_connect): heap corruption in every other guest of the server. A
        # pinned peer that comes back (a restart, a device plugged back) must never be announced.
        self.absent = {}
        self.ids = IdAllocator(config.pins)
        self.hold = config.hold
        self.accounts = dict(config.accounts)  # a hold may add the master's (see _control)
        self.names_by_uid = check_accounts(self.accounts)
        self.refused = 0
        self.refusals = collections.deque(maxlen=_REFUSALS_KEPT)
        self.dropped = 0
        self.started_at = time.time()
        self.selector = selectors.DefaultSelector()
        self.listener = None
        self.control = None
        self.shm_fd = None
        self._memory_created = False
        self._memory_message = None  # the handshake's memory message, encoded once the memory is open
        self._version_message = None
        self.fd_limit = None
        self.max_clients = config.max_clients
        self.max_backlog = config.max_backlog
        self._wake_r = self._wake_w = None
        self._stopping = False
        self._controls = {}  # socket fd -> _Control
        self._dirty = collections.OrderedDict()  # clients with messages to try now, in turn
        self._held_back = set()  # clients the kernel's limit on fds in flight held back
        self._retry_at = None
        self._paused = {}  # listener -> (callback, monotonic time to listen again)
        self._spare = []  # eventfds made ahead for the next newcomer
        self._arrivals = None
        self._spare_messages = None  # and their messages, encoded ahead (the ID is set at the join)
        self._round_ends = self._collected_at = self._collect_check_at = time.monotonic()  # see serve
        self._waiting_listener = None  # the clients' listener, when connections wait on it
        self.sender = best_sender(config.batch_send, _HANDSHAKE_QUANTUM)

    # --- setup -------------------------------------------------------------------------
    def setup(self):
        self.fd_limit = _raise_fd_limit()
        # Each client: its socket and an eventfd per vector; one client's worth is made ahead.
        capacity = max(1, (self.fd_limit - _RESERVED_FDS - self.config.vectors) // (self.config.vectors + 1))
        if self.max_clients is None:
            self.max_clients = min(capacity, MAX_PEER_ID + 1)
        elif self.max_clients > capacity:
            self.log('warning: --max-clients %d is above the %d clients the fd limit %d allows' % (
                self.max_clients, capacity, self.fd_limit))
        if self.max_backlog is None:
            longest_handshake = 3 + self.max_clients * max(self.config.vectors, 1)
            self.max_backlog = _BACKLOG_FLOOR + 2 * longest_handshake
        self.shm_fd = self._open_memory()
        self._memory_message = self.sender.encode(SHM_MARKER, [self.shm_fd]).messages[0]
        self._version_message = self.sender.encode(PROTOCOL_VERSION).messages[0]
        try:
            self.listener = self._listen(self.config.socket_path, self.config.socket_mode)
            self.control = self._listen(self.config.control_path, 0o600)
        except (ServerError, OSError):
            if self._memory_created:  # a server that never served leaves no memory behind
                _unlink_quietly(self.config.memory_path)
            raise
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept_client)
        self._arrivals = select.poll()  # the listeners alone, polled between turns (see _arriving)
        for sock in (self.listener, self.control):
            self._arrivals.register(sock, select.POLLIN)
        self.selector.register(self.control, selectors.EVENT_READ, self._accept_control)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeup)
        if self.config.pidfile:
            _write_atomic(self.config.pidfile, '%d\n' % os.getpid(), 0o644)
        self.log('listening on %s (memory %s, %d bytes, %d vectors, up to %d clients, sending with %s%s)' % (
            self.config.socket_path, self.config.memory_path, self.config.size, self.config.vectors,
            self.max_clients, self.sender.name, ', held for %s' % self.hold if self.hold else ''))

    def _open_memory(self):
        """Create the memory file exclusively; reuse only a stale one of ours, never a squatted one.

        A name another account created first (to read or write the group's memory) is refused,
        and so is a link. A file left by a killed server of ours is reused, so that guests still
        attached to it keep sharing memory with new ones.
        """
        path = self.config.memory_path
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        created = False
        try:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, self.config.memory_mode)
                created = self._memory_created = True
            except FileExistsError:
                fd = os.open(path, flags)
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.geteuid():
                    os.close(fd)
                    raise ServerError('shared memory %s already exists and is not a file of this server\'s '
                                      'account (uid %d, %d links): refusing a squatted name' % (
                                          path, info.st_uid, info.st_nlink))
                self.log('reusing the memory file %s left by an earlier server' % path)
        except OSError as exc:
            raise ServerError('cannot open shared memory %s: %s' % (path, exc.strerror))
        try:
            os.ftruncate(fd, self.config.size)
            # Every page reserved now: a full /dev/shm (or hugepage pool) is an error at start,
            # not a SIGBUS in the first guest that writes.
            os.posix_fallocate(fd, 0, self.config.size)
            os.fchmod(fd, self.config.memory_mode)
            self._chown(fd=fd)
        except OSError as exc:
            os.close(fd)
            if created:
                _unlink_quietly(path)  # no half-made memory left for the next server to reuse
            raise ServerError('cannot reserve shared memory %s of %d bytes: %s' % (path, self.config.size, exc.strerror))
        return fd

    def _chown(self, fd=None, path=None):
        if self.config.uid is None and self.config.gid is None:
            return
        uid = -1 if self.config.uid is None else self.config.uid
        gid = -1 if self.config.gid is None else self.config.gid
        if fd is not None:
            os.fchown(fd, uid, gid)
        else:
            os.chown(path, uid, gid)

    def _listen(self, path, mode):
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise ServerError('cannot bind %s: %s' % (path, exc.strerror))
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        self._chown(path=path)
        sock.listen(socket.SOMAXCONN)
        return sock

    # --- main loop ---------------------------------------------------------------------
    def serve(self):
        # A round serves its events first (requests, departures; a waiting connection is only
        # noted), then admits and sends for a time slice (each makes progress at least once): a
        # request from anyone else (a status, the next newcomer) waits for one slice, never for
        # a burst of joins. The collector runs only while every queue is empty, when it has
        # little to walk (in a burst of joins a full collection of the queued messages took
        # 10-18 ms, all of it in someone's wait); a server never idle collects every
        # _COLLECT_BUSY seconds (the garbage: a departed client's encoded messages).
        gc.freeze()  # what setup made lives as long as the server
        gc.disable()
        while not self._stopping:
            for key, mask in self.selector.select(self._next_timeout()):
                key.data(key.fileobj, mask)
            self._on_time()
            self._round_ends = time.monotonic() + _ROUND_SLICE
            self._admit_waiting()
            self._settle()
            self._when_idle()
        self.shutdown()

    def _when_idle(self):
        """Work kept off the joins' path: the next newcomer's eventfds, garbage collection."""
        idle = not self._dirty and not self._arriving()
        if idle and self._spare_messages is None:
            self._make_spare()
        now = time.monotonic()
        if now < self._collect_check_at:
            return
        # Looked at once per _COLLECT_IDLE: a client that stops reading keeps its queue full
        # for a long time, and every round would walk the clients.
        self._collect_check_at = now + _COLLECT_IDLE
        if now - self._collected_at >= _COLLECT_BUSY or (idle and not any(c.outbox for c in self.clients.values())):
            gc.collect()
            self._collected_at = time.monotonic()

    def _round_over(self):
        return time.monotonic() >= self._round_ends

    def _arriving(self):
        """Whether a connection waits to be accepted: work that can wait (the rest of a round's
        sends, the next newcomer's eventfds) yields to it, so a join never waits behind the
        announcements of the one before it."""
        return bool(self._arrivals.poll(0)) and not self._paused

    def _next_timeout(self):
        if self._dirty:
            return 0.0
        deadlines = [until for _callback, until in self._paused.values()]
        if self._controls:
            deadlines.append(min(c.opened for c in self._controls.values()) + _CONTROL_IDLE)
        if self._held_back:
            deadlines.append(self._retry_at)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _on_time(self):
        now = time.monotonic()
        if self._held_back and now >= self._retry_at:
            for client in self._held_back:
                self._dirty[client] = None
            self._held_back.clear()
        for control in [c for c in self._controls.values() if now >= c.opened + _CONTROL_IDLE]:
            self._close_control(control)
        for listener, (callback, until) in list(self._paused.items()):
            if now >= until:
                del self._paused[listener]
                self.selector.register(listener, selectors.EVENT_READ, callback)

    def _settle(self):
        # Sending is done here, never from inside an event handler (but a newcomer's own
        # handshake, see _admit): a client that fails while others are being told about a
        # departure is dropped without recursion.
        # Each client sends a quantum in turn, and a round ends after its time slice (see
        # serve): a burst of long handshakes never keeps the loop from others (a status
        # request, a newcomer). A waiting connection ends the round early, but never before
        # one turn: a flood of connections cannot starve the clients already served.
        while self._dirty:
            client = self._dirty.popitem(last=False)[0]
            # A newcomer's handshake goes first, in large turns: its QEMU waits on it.
            self._flush(client, _HANDSHAKE_QUANTUM if client.handshake_left else _CLIENT_QUANTUM)
            if self._arriving() or self._round_over():
                break

    def _on_signal(self, signum, _frame):
        self.log('signal %d: shutting down' % signum)
        self._stopping = True

    def _drain_wakeup(self, fd, _mask):
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass

    def shutdown(self):
        _sd_notify('STOPPING=1')
        # Guests still attached keep mapping the memory after the server is gone: unlinking it
        # would hand the next server fresh memory while they keep the old (the group split).
        attached = len(self.clients)
        for client in list(self.clients.values()):
            self._drop(client, 'server shutdown', announce=False)
        for client in self.absent.values():
            client.close_eventfds(force=True)
        self.absent = {}
        for control in list(self._controls.values()):
            control.sock.close()
        for sock, path in ((self.listener, self.config.socket_path), (self.control, self.config.control_path)):
            if sock is not None:
                sock.close()
                _unlink_quietly(path)
        for fd in self._spare:
            os.close(fd)
        self._spare = []
        if self.shm_fd is not None:
            os.close(self.shm_fd)
            if attached:
                self.log('keeping the memory file %s: %d guest(s) still map it (the next server reuses it)' % (
                    self.config.memory_path, attached))
            elif not self.config.keep_memory:
                _unlink_quietly(self.config.memory_path)
        if self.config.pidfile:
            _unlink_quietly(self.config.pidfile)
        self.log('stopped')

    def _accept(self, listener, callback):
        """The next connection, or None; at the fd limit, stop listening briefly instead of spinning."""
        try:
            sock, _addr = listener.accept()
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.log('accept failed: %s; not accepting for %d ms' % (exc.strerror, _ACCEPT_PAUSE * 1000))
                self.selector.unregister(listener)
                self._paused[listener] = (callback, time.monotonic() + _ACCEPT_PAUSE)
            return None
        sock.setblocking(False)
        return sock

    # --- clients -----------------------------------------------------------------------
    def _accept_client(self, listener, _mask):
        self._waiting_listener = listener  # admitted after the round's events (see serve)

    def _admit_waiting(self):
        # One at least, then as many as the round's time slice allows; the rest next round: a
        # burst of joins takes turns with everyone else.
        listener, self._waiting_listener = self._waiting_listener, None
        while listener is not None:
            sock = self._accept(listener, self._accept_client)
            if sock is None:
                return
            self._admit(sock)
            if self._round_over():
                return

    def _admit(self, sock):
        """Admit or refuse a new connection."""
        try:
            pid, uid, _gid = _peer_credentials(sock)
        except OSError:
            pid, uid = 0, -1
        # Who the client is comes from its account, which the kernel vouches for; a client with
        # no account of ours has no name here (status shows what it calls itself, read later).
        name = self.names_by_uid.get(uid)
        reason = self._refusal(uid, name)
        eventfds, messages = [], None
        returning = self.absent.get(self.config.pins.get(name)) if name is not None else None
        if not reason and returning is None:
            try:
                eventfds, messages = self._eventfds()
            except OSError as exc:
                reason = 'cannot create eventfds: %s' % exc.strerror
        peer_id = None if reason else self.ids.take(name)
        if peer_id is None and not reason:
            reason = 'ID %d is taken' % self.config.pins[name] if name in self.config.pins else 'no free ID'
        if reason:
            for fd in eventfds:
                os.close(fd)
            self.refused += 1
            # A refused QEMU never gives up: 7.2's ivshmem_recv_msg (hw/misc/ivshmem.c) reads the
            # closed connection again and again (a 0-byte read is not an error), spinning before
            # its monitor answers. Whoever starts it learns why from here (ivshmem.fleet.guest
            # fails at once, with this reason, instead of at its timeout).
            self.refusals.append({'pid': pid, 'uid': uid, 'name': name, 'reason': reason, 'at': round(time.time(), 3)})
            self.log('refused pid %d uid %d (%s): %s' % (
                pid, uid, name or 'calls itself %s' % (guest_name_of(pid) or 'nothing'), reason))
            sock.close()
            return
        if returning is not None:
            del self.absent[peer_id]
            # Every other guest holds these eventfds already (and the messages say the same ID).
            client = Client(sock, peer_id, pid, uid, name, returning.eventfds, returning.vectors + [returning.departure])
            client.announced = True
        else:
            messages.set_value(peer_id)
            client = Client(sock, peer_id, pid, uid, _UNREAD if name is None else name, eventfds, messages.messages)
        client.pinned = self.ids.pinned(peer_id)
        others = list(self.clients.values())
        self.clients[client.fileno] = client
        self.selector.register(sock, selectors.EVENT_READ, self._client_event)
        # The handshake (spec order): version, own ID, the memory, every peer's vectors, then the
        # client's own vectors; then every peer learns the newcomer's vectors. Queued in bulk (a
        # join queues peers x vectors messages twice). The handshake goes out at once, as far as
        # the socket takes it, before anything else: its QEMU waits on it.
        client.outbox.extend(((self._version_message, None), (client.departure, None), (self._memory_message, None)))
        for owner in others + list(self.absent.values()) + [client]:
            client.outbox.extend([(message, owner) for message in owner.vectors])
            owner.refs += len(owner.vectors)
        client.handshake_left = len(client.outbox)
        self._flush(client, _HANDSHAKE_QUANTUM)
        if client.gone:
            return  # it left at once; nobody was told of it
        announcement = [(message, client) for message in client.vectors]
        for other in others if returning is None else ():
            other.outbox.extend(announcement)
            self._dirty[other] = None
        client.refs += len(announcement) * len(others)
        client.announced = True
        if self.config.verbose:
            self.log('new peer id = %d (pid %d, %s)' % (peer_id, pid, client.name or 'unnamed'), verbose=True)

    def _eventfds(self):
        """A newcomer's eventfds and their messages: those made ahead while the server was idle,
        else made now."""
        failure = self._make_spare() if self._spare_messages is None else None
        if failure is not None:
            for fd in self._spare:
                os.close(fd)
            self._spare = []
            raise failure
        fds, messages = self._spare, self._spare_messages
        self._spare, self._spare_messages = [], None
        return fds, messages

    def _make_spare(self):
        """The next newcomer's eventfds and their messages, made while idle (off its join's path)."""
        try:
            while len(self._spare) < self.config.vectors:
                self._spare.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
        except OSError as exc:
            return exc  # at the fd limit: tried again at the join, which is refused if it still fails
        self._spare_messages = self.sender.encode(-1, self._spare + [None])  # the vectors, then the ID alone
        return None

    def _refusal(self, uid, name):
        if len(self.clients) >= self.max_clients:
            return 'client limit %d reached' % self.max_clients
        if name is None and self.config.admit_accounts_only and uid != 0:  # root could map the memory anyway
            return 'uid %d is not the account of a guest of this server' % uid
        if self.hold and name != self.hold:
            return 'admission held for master %s' % self.hold
        return None

    def _queue(self, client, message, owner=None):
        client.outbox.append((message, owner))
        if owner is not None:
            owner.refs += 1
        self._dirty[client] = None

    def _flush(self, client, quantum):
        """Send up to ``quantum`` messages, as many as the socket takes now.

        The rest waits for its next turn, or for the socket to become writable. This is the
        server's innermost loop (every message of every client passes here once), kept lean.
        """
        outbox = client.outbox
        sent, failure = self.sender.send(client.sock, outbox, quantum)
        if sent:
            # The messages sent release the eventfds they carried, counted per owner: a turn
            # carries long runs of one owner's vectors.
            for owner, count in collections.Counter(entry[1] for entry in itertools.islice(outbox, sent)).items():
                if owner is not None:
                    owner.refs -= count
                    if owner.gone and not owner.refs:
                        owner.close_eventfds()
            popleft = outbox.popleft
            for _message in range(sent):
                popleft()
        if client.handshake_left:
            client.handshake_left = max(0, client.handshake_left - sent)
        if failure is not None:
            if failure.errno != errno.ETOOMANYREFS:
                self._drop(client, 'left: %s' % (failure.strerror or failure))
                return
            # The server's user has too many fds in flight (unread by any client): a
            # momentary state while clients catch up, retried shortly.
            if not self._held_back:
                self._retry_at = time.monotonic() + _RETRY_INTERVAL
            self._held_back.add(client)
        elif outbox and sent == quantum:
            self._dirty[client] = None  # more to send: its next turn
            return
        # A handshake waiting is bounded by the client count; what counts is what came after it.
        if len(outbox) - client.handshake_left > self.max_backlog:
            self._drop(client, 'stopped reading: %d messages waiting' % len(outbox), fault=True)
            return
        self._watch_writes(client, bool(outbox) and client not in self._held_back)

    def _watch_writes(self, client, watch):
        if client.watching_writes != watch:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if watch else 0)
            self.selector.modify(client.sock, events, self._client_event)
            client.watching_writes = watch

    def _client_event(self, sock, mask):
        client = self.clients.get(sock.fileno())
        if client is None:
            return
        if mask & selectors.EVENT_READ:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                data = None
            except OSError:
                data = b''
            if data is not None:
                # The protocol is one-way: bytes from a client are a violation, EOF a departure.
                self._drop(client, 'sent data' if data else 'disconnected', fault=bool(data))
                return
        if mask & selectors.EVENT_WRITE:
            self._dirty[client] = None

    def _drop(self, client, why, announce=True, fault=False):
        """Forget a client; ``fault``: the server ends it (counted in ``dropped``), it did not just leave."""
        if client.gone:
            return
        client.gone = True
        del self.clients[client.fileno]
        self._dirty.pop(client, None)
        self._held_back.discard(client)
        self.selector.unregister(client.sock)
        client.sock.close()
        while client.outbox:
            owner = client.outbox.popleft()[1]
            if owner is not None:
                owner.release()
        announce = announce and client.announced
        if client.pinned and announce:
            # Others hold its vectors: it comes back with them, unannounced (see self.absent).
            # One that left before anyone was told of it comes back as a newcomer, announced.
            self.absent[client.peer_id] = client
            client.kept = True
            announce = False
        elif not client.refs:
            client.close_eventfds()
        self.ids.free(client.peer_id)
        self.dropped += fault
        self.log('free peer %d (%s)' % (client.peer_id, why), verbose=not fault)
        if announce:
            for other in self.clients.values():
                self._queue(other, client.departure)

    # --- control socket ----------------------------------------------------------------
    def _accept_control(self, listener, _mask):
        while True:
            sock = self._accept(listener, self._accept_control)
            if sock is None:
                return
            if len(self._controls) >= _MAX_CONTROLS:
                # Make room by closing the oldest: connections held open cannot lock status out.
                self._close_control(min(self._controls.values(), key=lambda c: c.opened))
            self._controls[sock.fileno()] = _Control(sock)
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
            if not isinstance(guest, str) or not _NAME_RE.match(guest):
                raise ControlError('admit needs a valid guest name')
            self._know(guest, _request_uid(request, 'admit', required=True))
            self.log('guest %s admitted (uid %d)' % (guest, self.accounts[guest]))
            return self.status()
        if command == 'hold':
            master, uid = request.get('master'), _request_uid(request, 'hold')
            if not isinstance(master, str) or not _NAME_RE.match(master):
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

    def _know(self, name, uid):
        """``name`` runs as ``uid`` from now on. A name that had this uid before gives it up when
        nothing holds it (not pinned, held or connected): an account removed and its uid reused."""
        if self.accounts.get(name) == uid:
            return
        connected = set(c.uid for c in self.clients.values())
        accounts = dict((n, u) for n, u in self.accounts.items()
                        if u != uid or n in self.config.pins or n == self.hold or u in connected)
        accounts[name] = uid
        try:
            self.names_by_uid = check_accounts(accounts)
        except ServerError as exc:
            raise ControlError(str(exc))
        self.accounts = accounts

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


# --- helpers -------------------------------------------------------------------------------
def _remove_stale_socket(path):
    """A socket left by a killed server is removed; a live one or a non-socket is an error."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ServerError('%s exists and is not a socket' % path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    except OSError as exc:
        raise ServerError('cannot probe %s: %s' % (path, exc))
    finally:
        probe.close()
    raise ServerError('another server is listening on %s' % path)


def _raise_fd_limit():
    """Raise the soft fd limit to the hard one (each client costs 1 + vectors fds); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _write_atomic(path, text, mode):
    tmp = '%s.%d.tmp' % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, 'w') as handle:
        handle.write(text)
    os.rename(tmp, path)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _sd_notify(message):
    """systemd's readiness protocol (Type=notify), without libsystemd."""
    address = os.environ.get('NOTIFY_SOCKET')
    if not address:
        return
    if address.startswith('@'):
        address = '\0' + address[1:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(address)
        sock.sendall(message.encode())
    except OSError:
        pass
    finally:
        sock.close()


def _pin(text):
    name, sep, peer_id = text.rpartition('=')
    if not sep or not _NAME_RE.match(name) or not peer_id.isdigit() or int(peer_id) > MAX_PEER_ID:
        raise argparse.ArgumentTypeError('expected NAME=ID with ID 0..%d, got %r' % (MAX_PEER_ID, text))
    return name, int(peer_id)


def _account(text):
    name, sep, uid = text.rpartition('=')
    if not sep or not _NAME_RE.match(name) or not uid.isdigit():
        raise argparse.ArgumentTypeError('expected NAME=UID, got %r' % text)
    return name, int(uid)


def _name(text):
    if not _NAME_RE.match(text):
        raise argparse.ArgumentTypeError('invalid name %r' % text)
    return text


def _vectors(text):
    value = int(text)
    if not 0 <= value <= MAX_VECTORS:
        raise argparse.ArgumentTypeError('vectors must be 0..%d' % MAX_VECTORS)
    return value


def _size(text):
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError('must be a positive number')
    return value


def _mode(text):
    return int(text, 8)


def _uid(text):
    import pwd
    return int(text) if text.isdigit() else pwd.getpwnam(text).pw_uid


def _gid(text):
    import grp
    return int(text) if text.isdigit() else grp.getgrnam(text).gr_gid


def build_parser():
    parser = argparse.ArgumentParser(
        prog='ivshmem-fleet-server',
        description='ivshmem server (ivshmem.fleet %s), a drop-in for QEMU\'s contrib ivshmem-server.' % VERSION)
    parser.add_argument('-v', dest='verbose', action='store_true', help='verbose log on stderr')
    parser.add_argument('-F', dest='foreground', action='store_true', help='foreground mode (default: daemonize)')
    parser.add_argument('-p', dest='pidfile', help='pid file')
    parser.add_argument('-S', dest='socket', default=DEFAULT_SOCKET, help='UNIX socket to listen on')
    parser.add_argument('-M', dest='shm_name', default=DEFAULT_SHM_NAME, type=_name,
                        help='POSIX shared memory name (a file in /dev/shm)')
    parser.add_argument('-m', dest='shm_dir', help='directory for the memory file instead of /dev/shm (e.g. hugetlbfs)')
    parser.add_argument('-l', dest='size', default=DEFAULT_SIZE, type=_size,
                        help='memory size, K/M/G suffixes, rounded up to a power of two')
    parser.add_argument('-n', dest='vectors', default=1, type=_vectors, help='interrupt vectors (0..64)')
    parser.add_argument('--control', help='control socket (status, hold, release); default SOCKET.ctl')
    parser.add_argument('--account', action='append', type=_account, metavar='NAME=UID',
                        help='guest NAME runs as UID (each its own): the server knows it by that account, '
                        'matched with SO_PEERCRED; repeatable')
    parser.add_argument('--admit-accounts-only', action='store_true',
                        help='admit only the guests given with --account or added by root (control request admit)')
    parser.add_argument('--pin', action='append', type=_pin, metavar='NAME=ID',
                        help='give guest NAME (see --account) always ID; repeatable')
    parser.add_argument('--hold', type=_name, metavar='MASTER',
                        help='start with admission held: admit only guest MASTER (see --account) until released')
    parser.add_argument('--max-clients', type=_positive, help='cap on connected clients '
                        '(default: as many as the fd limit allows, each client costing 1 + vectors fds)')
    parser.add_argument('--max-backlog', type=_positive,
                        help='messages beyond its handshake that may wait for one client before it counts as '
                        'not reading and is dropped (default: 65536 + twice the longest handshake, '
                        'max clients x vectors + 3)')
    parser.add_argument('--owner', type=_uid, help='owner of the socket and memory')
    parser.add_argument('--group', type=_gid, help='group of the socket and memory')
    parser.add_argument('--socket-mode', type=_mode, default=0o660, help='socket mode (octal)')
    parser.add_argument('--memory-mode', type=_mode, default=0o600, help='memory file mode (octal)')
    parser.add_argument('--admin-group', type=_gid,
                        help='besides root, the group whose processes may hold and release admission')
    parser.add_argument('--keep-memory', action='store_true', help='keep the memory file on shutdown')
    parser.add_argument('--no-sendmmsg', action='store_true',
                        help='send each message with its own system call (sendmsg), as where the C library has no '
                        'sendmmsg (default: a client\'s turn of messages in one sendmmsg call)')
    return parser


def _logger(verbose):
    def log(message, verbose=False):
        if verbose and not _logger.verbose:
            return
        sys.stderr.write('%s ivshmem-fleet-server[%d]: %s\n' % (
            time.strftime('%Y-%m-%dT%H:%M:%S'), os.getpid(), message))
        sys.stderr.flush()
    _logger.verbose = verbose
    return log


def _daemonize():
    """Double fork; the original process exits once the daemon is listening (or failed).

    Returns the pipe's write end, on which the daemon reports setup success or failure.
    """
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:
        os.close(write_fd)
        with os.fdopen(read_fd, 'rb') as pipe:
            report = pipe.read().decode('utf-8', 'replace')
        if report.startswith('ok'):
            os._exit(0)
        sys.stderr.write(report or 'ivshmem-fleet-server: daemon died during setup\n')
        os._exit(1)
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)
    return write_fd


def main(argv=None):
    args = build_parser().parse_args(argv)
    log = _logger(args.verbose)
    report_fd = None if args.foreground else _daemonize()
    try:
        server = IvshmemServer(Config(args), log)
        server.setup()
    except (ServerError, OSError) as exc:
        message = 'ivshmem-fleet-server: %s\n' % exc
        if report_fd is not None:
            os.write(report_fd, message.encode())
        else:
            sys.stderr.write(message)
        return 1
    if report_fd is not None:
        os.write(report_fd, b'ok\n')
        os.close(report_fd)
    _sd_notify('READY=1\nMAINPID=%d' % os.getpid())
    server.serve()
    return 0
