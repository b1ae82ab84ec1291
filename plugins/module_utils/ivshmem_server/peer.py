# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A host-side peer of an ivshmem server: ``ivshmem-fleet-peer`` (``main``).

It joins a server as a client, as a guest's QEMU does, and rings a guest's doorbell (``ring``),
waits for doorbells rung at it (``wait``) or says who is there (``info``). A builtin server knows
it by its account like a guest (a group's ``host_peers``: pinned after the guests, so ID 0 stays
the master's whoever connects first). It never maps the shared memory.

Exit status: 0 done; 1 the wait timed out; 2 refused, the server gone, or a peer not there.
Standard library only: the server module installs it beside the server program, as a zipapp
(``_server.peer_program``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import json
import os
import select
import sys
import time

from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_protocol import (
    MAX_PEER_ID, MAX_VECTORS, ProtocolError, connect_client, receive_message)

DONE, TIMED_OUT, REFUSED = 0, 1, 2


def _arguments(argv):
    parser = argparse.ArgumentParser(prog='ivshmem-fleet-peer', description='Join an ivshmem server as a host-side '
                                     'peer: ring a peer, wait for doorbells, list the peers.')
    parser.add_argument('-S', dest='socket', required=True, help="the server's UNIX socket")
    parser.add_argument('-n', dest='vectors', type=int, default=1,
                        help='vectors per peer, as the server was started with (default 1)')
    parser.add_argument('--timeout', type=float, default=10.0, help='seconds to join (default 10)')
    commands = parser.add_subparsers(dest='command', required=True)
    commands.add_parser('info', help='print this peer\'s ID and the peers with their vectors (JSON)')
    ring = commands.add_parser('ring', help="ring a peer's doorbell")
    ring.add_argument('--to', type=int, required=True, help='the peer ID to ring (0: the master)')
    ring.add_argument('--vector', type=int, default=0)
    ring.add_argument('--count', type=int, default=1, help='rings (default 1)')
    ring.add_argument('--interval', type=float, default=0.1, help='seconds between rings (default 0.1)')
    wait = commands.add_parser('wait', help='wait for doorbells rung at this peer; one line per doorbell')
    wait.add_argument('--vector', type=int, default=0)
    wait.add_argument('--count', type=int, default=1, help='doorbells to wait for (default 1)')
    wait.add_argument('--for', dest='seconds', type=float, default=30.0, help='seconds to wait (default 30)')
    args = parser.parse_args(argv)
    if not 1 <= args.vectors <= MAX_VECTORS:
        parser.error('-n must be 1..%d' % MAX_VECTORS)
    if args.command in ('ring', 'wait') and not 0 <= args.vector < args.vectors:
        parser.error('--vector must be 0..%d' % (args.vectors - 1))
    if args.command == 'ring' and not 0 <= args.to <= MAX_PEER_ID:
        parser.error('--to must be 0..%d' % MAX_PEER_ID)
    if args.command in ('ring', 'wait') and args.count < 1:
        parser.error('--count must be at least 1')
    return args


def _settle(sock, state, seconds=0.2):
    """Take the announcements the server sends right after the join (peers that came earlier
    arrive before this peer's own vectors; any in flight now arrive here)."""
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
            return
        state.apply(*receive_message(sock))


def _ring(sock, state, args, out):
    for number in range(args.count):
        _settle(sock, state, 0 if number else 0.2)
        fds = state.peers.get(args.to)
        if fds is None or len(fds) <= args.vector:
            out.write('peer %d is not connected (peers: %s)\n' % (args.to, sorted(state.peers)))
            return REFUSED
        os.eventfd_write(fds[args.vector], 1)
        out.write('rang peer %d vector %d\n' % (args.to, args.vector))
        out.flush()
        if number + 1 < args.count:
            time.sleep(args.interval)
    return DONE


def _wait(sock, state, args, out):
    own = state.peers[state.peer_id][args.vector]
    heard, deadline = 0, time.monotonic() + args.seconds
    while heard < args.count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            out.write('heard %d of %d doorbells in %.1f s\n' % (heard, args.count, args.seconds))
            return TIMED_OUT
        readable = select.select([own, sock], [], [], remaining)[0]
        if sock in readable:
            state.apply(*receive_message(sock))  # a peer came or went; EOF: the server went
        if own in readable:
            heard += os.eventfd_read(own)  # rings that came together count each
            out.write('doorbell vector %d (%d)\n' % (args.vector, heard))
            out.flush()
    return DONE


def main(argv=None, out=sys.stdout):
    args = _arguments(sys.argv[1:] if argv is None else argv)
    try:
        sock, state = connect_client(args.socket, args.vectors, args.timeout)
    except (OSError, ProtocolError) as exc:
        out.write('not joined to %s: %s (not admitted, or no server there)\n' % (args.socket, exc))
        return REFUSED
    try:
        sock.settimeout(None)
        if args.command == 'info':
            _settle(sock, state)
            out.write(json.dumps({'id': state.peer_id, 'peers': dict(
                (str(peer), len(fds)) for peer, fds in sorted(state.peers.items()))}, sort_keys=True) + '\n')
            return DONE
        return (_ring if args.command == 'ring' else _wait)(sock, state, args, out)
    except (OSError, ProtocolError) as exc:
        out.write('the server went away: %s\n' % exc)
        return REFUSED
    finally:
        sock.close()
        state.close()
