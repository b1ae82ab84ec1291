# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""ivshmem.fleet's ivshmem server: a production replacement for QEMU's contrib ivshmem-server.

Wire-compatible with ivshmem-doorbell and a drop-in for the upstream options
(-S -M -m -l -n -F -p -v). On top of upstream it allocates the first free ID,
pins IDs to guest names (learnt from SO_PEERCRED and /proc/PID/cmdline), answers
status queries and holds admission for a named master on a control socket,
caps clients, recovers from a stale socket and never lets one client's
misbehaviour take the others down.

Standard library only (Python >= 3.10 for os.eventfd): the modules ship this
file to managed hosts inside a zipapp, and the tests run it directly.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import os
import re
import resource
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
    send_message,
)
from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import (
    ControlError,
    read_request,
    write_response,
)

VERSION = '1.0.0'
DEFAULT_SOCKET = '/tmp/ivshmem_socket'
DEFAULT_SHM_NAME = 'ivshmem'
DEFAULT_SIZE = 4 << 20
DEFAULT_MAX_CLIENTS = 256
_SIZE_RE = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)\s*$', re.IGNORECASE)
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$')
_SUFFIX_SHIFT = {'': 0, 'b': 0, 'k': 10, 'm': 20, 'g': 30, 't': 40, 'p': 50, 'e': 60}
_CONTROL_LIMIT = 4096


def parse_size(text):
    """Parse an upstream-style size (bytes, or K/M/G/T/P/E suffixed) into bytes."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError('invalid size %r' % text)
    number, suffix = match.groups()
    if '.' in number and not suffix:
        raise ValueError('invalid size %r: a fraction needs a suffix' % text)
    value = int(float(number) * (1 << _SUFFIX_SHIFT[suffix.lower()]))
    if value <= 0:
        raise ValueError('invalid size %r: must be positive' % text)
    return value


def round_up_power_of_two(value):
    """The device's BAR is a power of two: upstream rounds the size up the same way."""
    return 1 << (value - 1).bit_length()


def guest_name_of(pid):
    """The QEMU ``-name`` of a process, or None (not QEMU, gone, or nameless)."""
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


class Client:
    def __init__(self, sock, peer_id, pid, uid, name, eventfds):
        self.sock = sock
        self.peer_id = peer_id
        self.pid = pid
        self.uid = uid
        self.name = name
        self.eventfds = eventfds
        self.connected_at = time.time()

    def status(self):
        return {'id': self.peer_id, 'pid': self.pid, 'uid': self.uid, 'name': self.name,
                'connected_at': round(self.connected_at, 3)}

    def close(self):
        self.sock.close()
        for fd in self.eventfds:
            os.close(fd)
        self.eventfds = []


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
        self.hold = args.hold
        self.max_clients = args.max_clients
        self.uid = args.owner
        self.gid = args.group
        self.socket_mode = args.socket_mode
        self.memory_mode = args.memory_mode
        self.keep_memory = args.keep_memory
        taken = {}
        for name, peer_id in self.pins.items():
            if peer_id in taken:
                raise ServerError('--pin: ID %d pinned to both %s and %s' % (peer_id, taken[peer_id], name))
            taken[peer_id] = name

    @property
    def memory_path(self):
        return os.path.join(self.shm_dir or '/dev/shm', self.shm_name)


class IvshmemServer:
    """One shared memory, its listening socket, its control socket and its clients."""

    def __init__(self, config, log):
        self.config = config
        self.log = log
        self.clients = {}  # socket fd -> Client
        self.hold = config.hold
        self.refused = 0
        self.started_at = time.time()
        self.selector = selectors.DefaultSelector()
        self.listener = None
        self.control = None
        self.shm_fd = None
        self._wake_r = self._wake_w = None
        self._stopping = False
        self._controls = {}  # socket fd -> (socket, bytearray)

    # --- setup -------------------------------------------------------------------------
    def setup(self):
        _raise_fd_limit()
        self.shm_fd = self._open_memory()
        self.listener = self._listen(self.config.socket_path, self.config.socket_mode)
        self.control = self._listen(self.config.control_path, 0o600)
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept_client)
        self.selector.register(self.control, selectors.EVENT_READ, self._accept_control)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeup)
        if self.config.pidfile:
            _write_atomic(self.config.pidfile, '%d\n' % os.getpid(), 0o644)
        self.log('listening on %s (memory %s, %d bytes, %d vectors%s)' % (
            self.config.socket_path, self.config.memory_path, self.config.size, self.config.vectors,
            ', held for %s' % self.hold if self.hold else ''))

    def _open_memory(self):
        path = self.config.memory_path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.config.memory_mode)
        except OSError as exc:
            raise ServerError('cannot open shared memory %s: %s' % (path, exc.strerror))
        try:
            os.ftruncate(fd, self.config.size)
            os.fchmod(fd, self.config.memory_mode)
            self._chown(fd=fd)
        except OSError as exc:
            os.close(fd)
            raise ServerError('cannot size shared memory %s to %d bytes: %s' % (path, self.config.size, exc.strerror))
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
        sock.listen(64)
        return sock

    # --- main loop ---------------------------------------------------------------------
    def serve(self):
        while not self._stopping:
            for key, _events in self.selector.select():
                key.data(key.fileobj)
        self.shutdown()

    def _on_signal(self, signum, _frame):
        self.log('signal %d: shutting down' % signum)
        self._stopping = True

    def _drain_wakeup(self, fd):
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass

    def shutdown(self):
        _sd_notify('STOPPING=1')
        for client in list(self.clients.values()):
            self._drop(client, 'server shutdown', announce=False)
        for sock, _buf in list(self._controls.values()):
            sock.close()
        for sock, path in ((self.listener, self.config.socket_path), (self.control, self.config.control_path)):
            if sock is not None:
                sock.close()
                _unlink_quietly(path)
        if self.shm_fd is not None:
            os.close(self.shm_fd)
            if not self.config.keep_memory:
                _unlink_quietly(self.config.memory_path)
        if self.config.pidfile:
            _unlink_quietly(self.config.pidfile)
        self.log('stopped')

    # --- clients -----------------------------------------------------------------------
    def _accept_client(self, listener):
        while True:
            try:
                sock, _addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                # EMFILE and friends: refuse this round rather than spin or die.
                self.log('accept failed: %s' % exc.strerror)
                return
            sock.setblocking(False)
            self._admit(sock)

    def _admit(self, sock):
        try:
            pid, uid, _gid = _peer_credentials(sock)
        except OSError:
            pid, uid = 0, -1
        name = guest_name_of(pid) if pid > 0 else None
        reason = self._refusal(name)
        peer_id = None if reason else self._allocate_id(name)
        if peer_id is None:
            reason = reason or 'no free ID'
        eventfds = []
        if not reason:
            try:
                for _vector in range(self.config.vectors):
                    eventfds.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
            except OSError as exc:
                reason = 'cannot create eventfds: %s' % exc.strerror
        if reason:
            for fd in eventfds:
                os.close(fd)
            self.refused += 1
            self.log('refused pid %d (%s): %s' % (pid, name or 'unnamed', reason))
            sock.close()
            return
        client = Client(sock, peer_id, pid, uid, name, eventfds)
        try:
            self._send_handshake(client)
        except OSError as exc:
            self.log('client pid %d left during the handshake: %s' % (pid, exc))
            client.close()
            return
        self.clients[sock.fileno()] = client
        self.selector.register(sock, selectors.EVENT_READ, self._client_readable)
        failed = []
        for other in list(self.clients.values()):
            if other is client:
                continue
            try:
                for fd in client.eventfds:
                    send_message(other.sock, client.peer_id, fd, socket.MSG_DONTWAIT)
            except OSError:
                failed.append(other)
        for other in failed:
            self._drop(other, 'not reading its socket')
        self.log('new peer id = %d (pid %d, %s)' % (peer_id, pid, name or 'unnamed'), verbose=True)

    def _refusal(self, name):
        if len(self.clients) >= self.config.max_clients:
            return 'client limit %d reached' % self.config.max_clients
        if self.hold and name != self.hold:
            return 'admission held for master %s' % self.hold
        return None

    def _allocate_id(self, name):
        in_use = set(client.peer_id for client in self.clients.values())
        if name in self.config.pins:
            wanted = self.config.pins[name]
            return None if wanted in in_use else wanted
        reserved = in_use | set(self.config.pins.values())
        for peer_id in range(MAX_PEER_ID + 1):
            if peer_id not in reserved:
                return peer_id
        return None

    def _send_handshake(self, client):
        flags = socket.MSG_DONTWAIT
        send_message(client.sock, PROTOCOL_VERSION, None, flags)
        send_message(client.sock, client.peer_id, None, flags)
        send_message(client.sock, SHM_MARKER, self.shm_fd, flags)
        for other in self.clients.values():
            for fd in other.eventfds:
                send_message(client.sock, other.peer_id, fd, flags)
        for fd in client.eventfds:
            send_message(client.sock, client.peer_id, fd, flags)

    def _client_readable(self, sock):
        client = self.clients.get(sock.fileno())
        if client is None:
            return
        try:
            data = sock.recv(4096)
        except OSError:
            data = b''
        # The protocol is one-way: bytes from a client are a violation, EOF a departure.
        self._drop(client, 'sent data' if data else 'disconnected')

    def _drop(self, client, why, announce=True):
        fileno = client.sock.fileno()
        self.clients.pop(fileno, None)
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.close()
        self.log('free peer %d (%s)' % (client.peer_id, why), verbose=why == 'disconnected')
        if announce:
            failed = []
            for other in self.clients.values():
                try:
                    send_message(other.sock, client.peer_id, None, socket.MSG_DONTWAIT)
                except OSError:
                    failed.append(other)
            for other in failed:
                self._drop(other, 'not reading its socket')

    # --- control socket ----------------------------------------------------------------
    def _accept_control(self, listener):
        while True:
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, OSError):
                return
            sock.setblocking(False)
            self._controls[sock.fileno()] = (sock, bytearray())
            self.selector.register(sock, selectors.EVENT_READ, self._control_readable)

    def _control_readable(self, sock):
        _sock, buf = self._controls[sock.fileno()]
        try:
            data = sock.recv(_CONTROL_LIMIT)
        except OSError:
            data = b''
        buf.extend(data)
        if data and b'\n' not in buf and len(buf) < _CONTROL_LIMIT:
            return
        self.selector.unregister(sock)
        del self._controls[sock.fileno()]
        try:
            if data:
                try:
                    response = {'return': self._control(read_request(bytes(buf)))}
                except ControlError as exc:
                    response = {'error': str(exc)}
                sock.setblocking(True)
                sock.settimeout(1.0)
                write_response(sock, response)
        except OSError:
            pass
        finally:
            sock.close()

    def _control(self, request):
        command = request.get('command')
        if command == 'status':
            return self.status()
        if command == 'hold':
            master = request.get('master')
            if not isinstance(master, str) or not _NAME_RE.match(master):
                raise ControlError('hold needs a valid master name')
            self.hold = master
            self.log('admission held for %s' % master)
            return self.status()
        if command == 'release':
            self.hold = None
            self.log('admission released')
            return self.status()
        raise ControlError('unknown command %r' % command)

    def status(self):
        cfg = self.config
        return {
            'implementation': 'builtin', 'version': VERSION, 'pid': os.getpid(),
            'socket': cfg.socket_path, 'control': cfg.control_path, 'memory': cfg.memory_path,
            'size': cfg.size, 'vectors': cfg.vectors, 'hold': self.hold, 'pins': cfg.pins,
            'max_clients': cfg.max_clients, 'refused': self.refused,
            'started_at': round(self.started_at, 3),
            'clients': sorted((c.status() for c in self.clients.values()), key=lambda c: c['id']),
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
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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
    parser.add_argument('--pin', action='append', type=_pin, metavar='NAME=ID',
                        help='give the guest named NAME (QEMU -name) always ID; repeatable')
    parser.add_argument('--hold', type=_name, metavar='MASTER',
                        help='start with admission held: admit only this guest until released')
    parser.add_argument('--max-clients', type=int, default=DEFAULT_MAX_CLIENTS, help='cap on connected clients')
    parser.add_argument('--owner', type=_uid, help='owner of the socket and memory')
    parser.add_argument('--group', type=_gid, help='group of the socket and memory')
    parser.add_argument('--socket-mode', type=_mode, default=0o660, help='socket mode (octal)')
    parser.add_argument('--memory-mode', type=_mode, default=0o600, help='memory file mode (octal)')
    parser.add_argument('--keep-memory', action='store_true', help='keep the memory file on shutdown')
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
