"""The verification channel (_verify_channel.py) on real sockets on this machine: only the other
side's message at its step counts, a verdict says yes or no explicitly, and idle or hostile
connections hold nothing up."""
import os
import socket
import threading
import time

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _verify_channel as channel

KEY = os.urandom(32).hex()


@pytest.fixture
def uri(tmp_path):
    return 'unix:%s' % (tmp_path / 'incoming.sock')


def destination(uri, answer, got, **overrides):
    """A destination that takes the source's checksums and answers ``answer`` (in a thread)."""
    listener = channel.Listener(uri, KEY, 'run1')

    def run():
        try:
            got['message'] = listener.receive(overrides.get('timeout', 10))
            listener.answer(answer)
        except channel.ChannelError as exc:
            got['error'] = str(exc)
        finally:
            listener.close()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_verdict_comes_from_the_destination_and_says_yes_or_no(uri):
    got = {}
    thread = destination(uri, {'ok': True}, got)
    verdict = channel.exchange(uri, KEY, 'run1', {'checksums': ['c']}, 10)
    thread.join()
    assert verdict['ok'] is True and got['message']['checksums'] == ['c']
    got = {}
    thread = destination(uri, {'ok': False, 'why': 'differs'}, got)
    assert channel.exchange(uri, KEY, 'run1', {'checksums': ['c']}, 10)['ok'] is False
    thread.join()


def reflector(address):
    """A relay on the migration network that sends the source's own message back as the answer."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(address)
    server.listen(1)

    def run():
        conn, _peer = server.accept()
        line = conn.makefile('rb').readline()
        conn.sendall(line)
        conn.close()
        server.close()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_the_source_s_own_message_reflected_is_no_verdict(uri):
    """Both directions are sealed with one key: without the sender and step in what the HMAC
    covers, the echo verified as the destination's answer, and an answer without an explicit
    yes was taken as a refusal (the source resumed while the destination ran)."""
    thread = reflector(channel.endpoint(uri)[1])
    with pytest.raises(channel.ChannelError) as info:
        channel.exchange(uri, KEY, 'run1', {'checksums': ['c']}, 10)
    thread.join()
    assert 'reflected' in str(info.value)


def test_an_answer_without_an_explicit_yes_or_no_is_no_verdict(uri):
    address = channel.endpoint(uri)[1]
    server = socket.socket(socket.AF_UNIX)
    server.bind(address)
    server.listen(1)

    def run():
        conn, _peer = server.accept()
        conn.makefile('rb').readline()
        conn.sendall(channel._seal(KEY, 'run1', channel.DESTINATION, channel.VERDICT, {'why': 'no ok at all'}))
        conn.close()
    thread = threading.Thread(target=run)
    thread.start()
    with pytest.raises(channel.ChannelError) as info:
        channel.exchange(uri, KEY, 'run1', {'checksums': ['c']}, 10)
    thread.join()
    server.close()
    assert 'neither yes nor no' in str(info.value)


def test_idle_and_forged_connections_do_not_delay_the_source(uri):
    """Four idle connections made the destination wait 10 s on each before the source's turn (the
    source failed after 25 s). Now the source is answered at once, whatever waits beside it."""
    got = {}
    thread = destination(uri, {'ok': True}, got)
    address = channel.endpoint(uri)[1]
    wait = time.monotonic() + 5
    while not os.path.exists(address) and time.monotonic() < wait:
        time.sleep(0.01)
    idle = []
    for _index in range(channel.MAX_PENDING + 4):  # more than are held: the oldest are dropped
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(address)
        idle.append(sock)
    forged = socket.socket(socket.AF_UNIX)
    forged.connect(address)
    forged.sendall(channel._seal(os.urandom(32).hex(), 'run1', channel.SOURCE, channel.CHECKSUMS, {'checksums': ['x']}))
    started = time.monotonic()
    verdict = channel.exchange(uri, KEY, 'run1', {'checksums': ['c']}, 10)
    took = time.monotonic() - started
    thread.join()
    for sock in idle + [forged]:
        sock.close()
    assert verdict['ok'] is True and got['message']['checksums'] == ['c']
    assert took < 2, 'the source waited %.1f s behind idle connections' % took


def test_a_taken_port_is_a_channel_error_naming_it(uri):
    address = channel.endpoint(uri)[1]
    squatter = socket.socket(socket.AF_INET)
    squatter.bind(('127.0.0.1', 0))
    squatter.listen(1)
    port = squatter.getsockname()[1]
    try:
        with pytest.raises(channel.ChannelError) as info:
            channel.Listener('tcp:127.0.0.1:%d' % (port - 1), KEY, 'run1')
        assert '127.0.0.1' in str(info.value) and str(port) in str(info.value)
    finally:
        squatter.close()
    assert not os.path.exists(address)
