import collections
import errno
import os
import socket

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import ControlError, read_request
from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_protocol import (
    ClientState, ProtocolError, receive_message, send_message)
from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_send import BatchSender, MessageSender, best_sender

SENDERS = {'sendmmsg': lambda: best_sender(most=512), 'sendmsg': MessageSender}


def test_message_is_8_byte_little_endian_with_one_fd():
    a, b = socket.socketpair()
    fd = os.eventfd(0)
    send_message(a, -1, fd)
    send_message(a, 258)
    value, got = receive_message(b)
    assert value == -1 and got is not None and got != fd
    os.write(got, (1).to_bytes(8, 'little'))  # the received fd is the same eventfd
    assert int.from_bytes(os.read(fd, 8), 'little') == 1
    a.sendall(b'')
    assert receive_message(b) == (258, None)
    raw_a, raw_b = socket.socketpair()
    send_message(raw_a, 258)
    assert raw_b.recv(8) == (258).to_bytes(8, 'little')
    for s in (a, b, raw_a, raw_b):
        s.close()
    os.close(fd)
    os.close(got)


def test_eof_is_a_protocol_error():
    a, b = socket.socketpair()
    a.close()
    with pytest.raises(ProtocolError):
        receive_message(b)


def test_client_state_follows_the_handshake_and_departures():
    state = ClientState()
    shm, e0, e1 = os.eventfd(0), os.eventfd(0), os.eventfd(0)
    for value, fd in ((0, None), (3, None), (-1, shm), (1, e0), (3, e1)):
        assert state.apply(value, fd) is None
    assert state.peer_id == 3 and state.shm_fd == shm and sorted(state.peers) == [1, 3]
    assert state.apply(1, None) == 1  # peer 1 left: its fds are closed
    assert sorted(state.peers) == [3]
    state.close()


@pytest.mark.parametrize('messages', [[(1, None)], [(0, None), (70000, None)], [(0, None), (0, None), (5, None)]])
def test_client_state_rejects_bad_handshakes(messages):
    state = ClientState()
    with pytest.raises(ProtocolError):
        for value, fd in messages:
            state.apply(value, fd)


def test_control_requests_must_be_json_objects():
    assert read_request(b'{"command": "status"}\n') == {'command': 'status'}
    for bad in (b'nonsense\n', b'[1]\n'):
        with pytest.raises(ControlError):
            read_request(bad)


def test_a_request_nested_thousands_deep_is_a_clear_error():
    with pytest.raises(ControlError):
        read_request(b'[' * 100000 + b'\n')


def _eventfd_value(fd):
    return int.from_bytes(os.read(fd, 8), 'little')


@pytest.mark.parametrize('kind', sorted(SENDERS))
def test_a_sender_delivers_each_queued_message_whole_with_its_own_fd(kind):
    sender = SENDERS[kind]()
    assert sender.name == kind
    a, b = socket.socketpair()
    fds = [os.eventfd(0, os.EFD_NONBLOCK) for _fd in range(3)]
    vectors = sender.encode(-1, fds)  # encoded before the ID is known, as a newcomer's are
    vectors.set_value(7)
    queue = collections.deque([(message, None) for message in sender.encode(0).messages + vectors.messages])
    assert sender.send(a, queue, 10) == (4, None)
    assert receive_message(b) == (0, None)
    for fd in fds:
        value, got = receive_message(b)
        assert value == 7 and got is not None
        os.write(got, (5).to_bytes(8, 'little'))  # each message carries the eventfd it was encoded with
        assert _eventfd_value(fd) == 5
        os.close(got)
    for fd in fds + [a.detach(), b.detach()]:
        os.close(fd)


@pytest.mark.parametrize('kind', sorted(SENDERS))
def test_a_sender_stops_at_a_full_socket_and_reports_a_broken_one(kind):
    sender = SENDERS[kind]()
    a, b = socket.socketpair()
    fd = os.eventfd(0)
    message = sender.encode(1, [fd]).messages[0]
    queue = collections.deque([(message, None)] * 2000)
    sent, error = sender.send(a, queue, 512)
    assert error is None and 0 < sent < 512  # a socket takes a few hundred messages with an fd
    assert sender.send(a, collections.deque(list(queue)[sent:]), 512) == (0, None)  # full: nothing, no error
    b.close()
    sent, error = sender.send(a, queue, 512)
    assert sent == 0 and isinstance(error, OSError) and error.errno in (errno.EPIPE, errno.ECONNRESET)
    a.close()
    os.close(fd)


def test_the_batch_sender_is_chosen_where_the_c_library_has_sendmmsg():
    assert isinstance(best_sender(), BatchSender)
    assert type(best_sender(batch=False)) is MessageSender  # pylint: disable=unidiomatic-typecheck
