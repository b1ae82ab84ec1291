"""Acting as another local account from a test running as root: in a forked child that drops
root for good, so nothing of the test process changes."""
import os
import pwd
import socket


def _in_child(user, work):
    """Fork; the child becomes ``user`` and runs ``work(channel)``; returns the parent's end of
    the channel (a socket pair) and the child's pid."""
    account = pwd.getpwnam(user)
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            parent.close()
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            work(child)
        except BaseException as exc:  # noqa: B036 (the child reports whatever happened)
            child.sendall(('%s: %s' % (type(exc).__name__, exc)).encode())
        finally:
            os._exit(0)
    child.close()
    return parent, pid


def as_account(user, action):
    """Run ``action()`` in a child as ``user``; its result, as text."""
    channel, pid = _in_child(user, lambda child: child.sendall(str(action()).encode()))
    with channel:
        result = b''.join(iter(lambda: channel.recv(65536), b''))
    os.waitpid(pid, 0)
    return result.decode()


def connect_as(user, path):
    """A UNIX socket connected to ``path`` by ``user`` (the peer credentials a server reads are
    that account's), handed back to the test."""
    def connect(child):
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(path)
        socket.send_fds(child, [b'c'], [conn.fileno()])
    channel, pid = _in_child(user, connect)
    with channel:
        data, fds, _flags, _addr = socket.recv_fds(channel, 4096, 1)
    os.waitpid(pid, 0)
    if not fds:
        raise OSError('%s could not connect to %s: %s' % (user, path, data.decode()))
    return socket.socket(fileno=fds[0])
