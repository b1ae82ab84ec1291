# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Who may join, and the join: the handshake, the announcements, the accounts known."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import selectors
import time

from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import ControlError
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.clients import (
    HANDSHAKE_QUANTUM,
    UNREAD,
    Client,
    guest_name_of,
    peer_credentials,
)
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.config import ServerError, check_accounts

REFUSALS_KEPT = 32  # the latest refusals, in status (see _admit)


class Admission:
    """The joins of ``loop.IvshmemServer`` (mixed into it: uses its clients, IDs, selector and ``_flush``)."""

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
            pid, uid, _gid = peer_credentials(sock)
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
            client = Client(sock, peer_id, pid, uid, UNREAD if name is None else name, eventfds, messages.messages)
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
        self._flush(client, HANDSHAKE_QUANTUM)
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
