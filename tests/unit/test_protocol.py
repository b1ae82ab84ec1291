import os
import socket

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import ControlError, read_request
from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_protocol import (
    ClientState, ProtocolError, receive_message, send_message)


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
