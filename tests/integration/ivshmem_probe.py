"""Many ivshmem clients in one process, each reading every message as QEMU's device does.

A probe client checks the protocol order (version, own ID, memory, then vectors and
departures), counts each peer's vectors, closes every fd it receives at once (a thousand
clients would otherwise hold millions) and records when its own vectors arrived: that is
its handshake latency. Used by the server-scale tests and bench/server_scale.py, for our
server and upstream's alike.
"""
import array
import collections
import os
import selectors
import socket
import struct
import time

_MSG = struct.Struct('<q')
_FD_SPACE = socket.CMSG_SPACE(array.array('i').itemsize)


class ProbeClient:
    def __init__(self, sock, vectors):
        self.sock = sock
        self.vectors = vectors
        self.started = time.monotonic()
        self.joined = None  # monotonic time the client's own vectors were all in
        self.closed = None  # why the server ended the connection, if it did
        self.version = None
        self.peer_id = None
        self.memory = False
        self.peers = collections.Counter()  # peer ID -> vectors known
        self.departures = []
        self.known = set()  # every peer ID this client was ever told about
        self.messages = 0
        self.reading = True

    @property
    def latency(self):
        return None if self.joined is None else self.joined - self.started

    def _apply(self, value, fd):
        self.messages += 1
        if self.version is None:
            assert fd is None and value == 0, 'protocol version expected, got %r' % value
            self.version = value
        elif self.peer_id is None:
            assert fd is None and value >= 0, 'own ID expected, got %r' % value
            self.peer_id = value
        elif not self.memory:
            assert fd is not None and value == -1, 'shared memory expected, got %r' % value
            self.memory = True
        elif fd is None:
            self.departures.append(value)
            self.peers.pop(value, None)
        else:
            self.peers[value] += 1
            self.known.add(value)
            if value == self.peer_id and self.peers[value] == self.vectors and self.joined is None:
                self.joined = time.monotonic()

    def read(self, limit=1024):
        """Read what is there (up to ``limit`` messages); False once the server closed."""
        for _message in range(limit):
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(_MSG.size, _FD_SPACE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError as exc:
                self.closed = str(exc)
                return False
            fd = None
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array('i')
                    fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
                    for received in fds:
                        os.close(received)
                    fd = fds[0] if fds else None
            if not data:
                self.closed = 'closed by the server'
                return False
            assert len(data) == _MSG.size, 'torn message of %d bytes' % len(data)
            self._apply(_MSG.unpack(data)[0], fd)
        return True


class Probe:
    """Clients of one server, pumped together so that none falls behind unless told to."""

    def __init__(self, path, vectors):
        self.path = path
        self.vectors = vectors
        self.clients = []
        self.selector = selectors.DefaultSelector()

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client = ProbeClient(sock, self.vectors)
        sock.settimeout(10)
        sock.connect(self.path)
        return self.adopt(sock, client)

    def adopt(self, sock, client=None):
        """A client on a connection made elsewhere (by another account, say)."""
        client = client or ProbeClient(sock, self.vectors)
        sock.setblocking(False)
        self.clients.append(client)
        self.selector.register(sock, selectors.EVENT_READ, client)
        return client

    def stop_reading(self, client):
        client.reading = False
        self.selector.unregister(client.sock)

    def resume_reading(self, client):
        client.reading = True
        self.selector.register(client.sock, selectors.EVENT_READ, client)

    def pump(self, timeout):
        for key, _mask in self.selector.select(timeout):
            client = key.data
            if not client.read():
                self.selector.unregister(client.sock)
                client.reading = False

    def until(self, predicate, timeout):
        """Pump until ``predicate()`` holds; returns whether it did within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.pump(min(left, 0.05))
        return True

    def settled(self, client):
        return client.joined is not None or client.closed is not None

    def alive(self):
        return [client for client in self.clients if client.closed is None]

    def knows_everyone(self, client):
        """The client knows every live client's vectors, and only theirs."""
        live = set(other.peer_id for other in self.alive() if other.joined is not None)
        return set(client.peers) == live and all(n == self.vectors for n in client.peers.values())

    def close(self, client=None):
        for each in ([client] if client else list(self.clients)):
            if each.reading:
                self.selector.unregister(each.sock)
                each.reading = False
            each.sock.close()
            each.closed = each.closed or 'closed by the probe'
            if client:
                self.clients.remove(each)
        if client is None:
            self.selector.close()
