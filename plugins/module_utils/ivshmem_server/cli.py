# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The command line (a drop-in for upstream's options), the log and the daemon: ``main``.

The package (its ``__init__.py`` stays empty, as ansible-test wants of module_utils packages):

ivshmem.fleet's ivshmem server: a production replacement for QEMU's contrib ivshmem-server.

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

The program by concern, each module importing only what it needs:

- ``config``: its settings (``Config``), their cross-checks and ``ServerError``;
- ``ids``: the peer ID allocator;
- ``clients``: one connected guest and what it has yet to read;
- ``admission``: who may join, and the join itself (the handshake, the announcements);
- ``loop``: the server (``IvshmemServer``): memory, sockets, the event loop, sending, departures;
- ``control``: the control socket (status, hold, release, admit);
- ``system``: the host's facilities (fd limit, stale sockets, systemd readiness);
- ``cli``: the command line, logging and the daemon (``main``).

What it shares with the modules (names, one account per guest, stale sockets, atomic writes)
it imports from ``module_utils/_rules.py``, which the zipapp carries too.

Standard library only (Python >= 3.10 for os.eventfd): the modules ship this package to
managed hosts inside a zipapp (``_server.builtin_program``), and the tests run it directly
(``python -c 'from ...ivshmem_server.cli import main; main()'``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import os
import sys
import time

from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_protocol import MAX_PEER_ID, MAX_VECTORS
from ansible_collections.ivshmem.fleet.plugins.module_utils._rules import PROGRAM_NAME_RE
from ansible_collections.ivshmem.fleet.plugins.module_utils._sizes import parse_size
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.config import VERSION, Config, ServerError
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.loop import IvshmemServer
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.system import sd_notify

DEFAULT_SOCKET = '/tmp/ivshmem_socket'
DEFAULT_SHM_NAME = 'ivshmem'
DEFAULT_SIZE = 4 << 20


def _pin(text):
    name, sep, peer_id = text.rpartition('=')
    if not sep or not PROGRAM_NAME_RE.match(name) or not peer_id.isdigit() or int(peer_id) > MAX_PEER_ID:
        raise argparse.ArgumentTypeError('expected NAME=ID with ID 0..%d, got %r' % (MAX_PEER_ID, text))
    return name, int(peer_id)


def _account(text):
    name, sep, uid = text.rpartition('=')
    if not sep or not PROGRAM_NAME_RE.match(name) or not uid.isdigit():
        raise argparse.ArgumentTypeError('expected NAME=UID, got %r' % text)
    return name, int(uid)


def _name(text):
    if not PROGRAM_NAME_RE.match(text):
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
    sd_notify('READY=1\nMAINPID=%d' % os.getpid())
    server.serve()
    return 0
