# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The server: its memory, its sockets, the event loop, sending in turns and departures."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import errno
import gc
import itertools
import os
import select
import selectors
import signal
import socket
import time

from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_protocol import (
    MAX_PEER_ID,
    PROTOCOL_VERSION,
    SHM_MARKER,
)
from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_send import best_sender
from ansible_collections.ivshmem.fleet.plugins.module_utils._rules import squatted, write_atomic
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.admission import REFUSALS_KEPT, Admission
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.clients import CLIENT_QUANTUM, HANDSHAKE_QUANTUM
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.config import ServerError, check_accounts
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.control import CONTROL_IDLE, Control
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.ids import IdAllocator
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.system import (
    raise_fd_limit,
    remove_stale_socket,
    sd_notify,
    unlink_quietly,
)

_RESERVED_FDS = 128  # listeners, control connections, the memory, the log
_BACKLOG_FLOOR = 65536  # messages: see --max-backlog
_RETRY_INTERVAL = 0.02
_ACCEPT_PAUSE = 0.2
_ROUND_SLICE = 0.001  # seconds of admissions and sends per loop round (see serve)
_COLLECT_IDLE = 1.0  # seconds between looks for a moment to collect garbage (see serve)
_COLLECT_BUSY = 30.0  # seconds after which garbage is collected even if no queue is ever empty


class IvshmemServer(Admission, Control):
    """One shared memory, its listening socket, its control socket and its clients.

    The joins (``admission.Admission``) and the control requests (``control.Control``) are
    methods of this class, written beside their concern.
    """

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
        self.accounts = dict(config.accounts)  # a hold may add the master's (see control.py)
        self.names_by_uid = check_accounts(self.accounts)
        self.refused = 0
        self.refusals = collections.deque(maxlen=REFUSALS_KEPT)
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
        self._controls = {}  # socket fd -> control.ControlConnection
        self._dirty = collections.OrderedDict()  # clients with messages to try now, in turn
        self._held_back = set()  # clients the kernel's limit on fds in flight held back
        self._retry_at = None
        self._paused = {}  # listener -> (callback, monotonic time to listen again)
        self._spare = []  # eventfds made ahead for the next newcomer
        self._arrivals = None
        self._spare_messages = None  # and their messages, encoded ahead (the ID is set at the join)
        self._round_ends = self._collected_at = self._collect_check_at = time.monotonic()  # see serve
        self._waiting_listener = None  # the clients' listener, when connections wait on it
        self.sender = best_sender(config.batch_send, HANDSHAKE_QUANTUM)

    # --- setup -------------------------------------------------------------------------
    def setup(self):
        self.fd_limit = raise_fd_limit()
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
                unlink_quietly(self.config.memory_path)
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
            write_atomic(self.config.pidfile, '%d\n' % os.getpid(), 0o644, exact_mode=False)
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
                if squatted(info, os.geteuid()):
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
                unlink_quietly(path)  # no half-made memory left for the next server to reuse
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
        remove_stale_socket(path)
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
            deadlines.append(min(c.opened for c in self._controls.values()) + CONTROL_IDLE)
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
        for control in [c for c in self._controls.values() if now >= c.opened + CONTROL_IDLE]:
            self._close_control(control)
        for listener, (callback, until) in list(self._paused.items()):
            if now >= until:
                del self._paused[listener]
                self.selector.register(listener, selectors.EVENT_READ, callback)

    def _settle(self):
        # Sending is done here, never from inside an event handler (but a newcomer's own
        # handshake, see admission.py): a client that fails while others are being told about a
        # departure is dropped without recursion.
        # Each client sends a quantum in turn, and a round ends after its time slice (see
        # serve): a burst of long handshakes never keeps the loop from others (a status
        # request, a newcomer). A waiting connection ends the round early, but never before
        # one turn: a flood of connections cannot starve the clients already served.
        while self._dirty:
            client = self._dirty.popitem(last=False)[0]
            # A newcomer's handshake goes first, in large turns: its QEMU waits on it.
            self._flush(client, HANDSHAKE_QUANTUM if client.handshake_left else CLIENT_QUANTUM)
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
        sd_notify('STOPPING=1')
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
                unlink_quietly(path)
        for fd in self._spare:
            os.close(fd)
        self._spare = []
        if self.shm_fd is not None:
            os.close(self.shm_fd)
            if attached:
                self.log('keeping the memory file %s: %d guest(s) still map it (the next server reuses it)' % (
                    self.config.memory_path, attached))
            elif not self.config.keep_memory:
                unlink_quietly(self.config.memory_path)
        if self.config.pidfile:
            unlink_quietly(self.config.pidfile)
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
