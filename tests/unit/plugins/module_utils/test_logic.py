import os
import threading

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._checksum import ChecksumError, checksum_files
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.cli import build_parser
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.clients import guest_name_of
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.config import Config
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.ids import IdAllocator
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.loop import IvshmemServer
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import WaitTimeout, wait_for
from ansible_collections.ivshmem.fleet.plugins.module_utils._vm import read_word


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_waiter_returns_value_and_waited_time():
    clock = FakeClock()
    answers = iter([None, None, 'ready'])
    value, waited = wait_for('x', lambda: next(answers), 10, interval=0.5, clock=clock, sleep=clock.sleep)
    assert value == 'ready' and waited == pytest.approx(0.5 + 0.75)


def test_waiter_times_out_with_the_last_error():
    clock = FakeClock()

    def probe():
        raise OSError('refused')
    with pytest.raises(WaitTimeout) as info:
        wait_for('the thing', probe, 3, retry_on=(OSError,), clock=clock, sleep=clock.sleep)
    assert info.value.waited >= 3 and 'the thing' in str(info.value) and 'refused' in str(info.value)


def server_with(args, clients=()):
    config = Config(build_parser().parse_args(args))
    server = IvshmemServer(config, lambda *a, **k: None)
    for index, (peer_id, name) in enumerate(clients):
        server.clients[index] = type('C', (), {'peer_id': peer_id, 'name': name})()
    return server


def test_ids_never_used_first_then_least_recently_freed_and_pins_kept():
    ids = IdAllocator({'m': 0, 'p': 2}, highest=5)
    assert [ids.take(None), ids.take('m'), ids.take(None)] == [1, 0, 3]
    ids.free(1)
    ids.free(3)
    assert [ids.take(None), ids.take(None)] == [4, 5]  # fresh IDs while any are left
    ids.free(4)
    assert [ids.take(None), ids.take(None), ids.take(None)] == [1, 3, 4]  # then the oldest freed
    assert ids.take(None) is None and ids.take('m') is None  # none left; 0 is m's and in use
    assert ids.take('p') == 2  # a pin is never handed to anyone else
    ids.free(0)
    assert ids.take(None) is None and ids.take('m') == 0


def test_hold_admits_only_the_master_and_cap_refuses():
    server = server_with(['--account', 'm=1001', '--account', 'peer=1002', '--hold', 'm', '--max-clients', '2'])
    assert server._refusal(1001, 'm') is None
    assert 'held' in server._refusal(1002, 'peer')
    assert 'held' in server._refusal(1003, None)
    server = server_with(['--max-clients', '1'], clients=[(0, 'a')])
    assert 'limit' in server._refusal(1001, None)


def test_a_guest_is_known_by_its_account_never_by_a_name():
    server = server_with(['--account', 'm=1001', '--account', 'p=1002', '--pin', 'm=0', '--admit-accounts-only',
                          '--max-clients', '4'])
    assert server.names_by_uid == {1001: 'm', 1002: 'p'}
    assert server._refusal(1002, 'p') is None
    assert 'not the account of a guest' in server._refusal(1003, None)
    open_server = server_with(['--account', 'm=1001', '--pin', 'm=0', '--max-clients', '4'])
    assert open_server._refusal(1003, None) is None  # without --admit-accounts-only the socket decides


@pytest.mark.parametrize('args, message', [
    (['--pin', 'm=0'], '--pin m: no --account m=UID'),
    (['--hold', 'm'], '--hold m: no --account m=UID'),
    (['--account', 'm=5', '--account', 'p=5'], 'uid 5 given to both m and p'),
])
def test_names_without_an_account_are_refused_at_start(args, message):
    from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.config import ServerError
    with pytest.raises(ServerError) as info:
        Config(build_parser().parse_args(args))
    assert message in str(info.value)


def test_parser_is_a_drop_in_for_upstream_options():
    args = build_parser().parse_args(['-F', '-v', '-S', '/s', '-M', 'shm', '-m', '/d', '-l', '1G', '-n', '64', '-p', '/p'])
    assert (args.foreground, args.verbose, args.socket, args.shm_name, args.shm_dir, args.size, args.vectors,
            args.pidfile) == (True, True, '/s', 'shm', '/d', 1 << 30, 64, '/p')
    with pytest.raises(SystemExit):
        build_parser().parse_args(['-n', '65'])


def test_conflicting_pins_are_refused():
    from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.config import ServerError
    with pytest.raises(ServerError):
        Config(build_parser().parse_args(['--account', 'a=5', '--account', 'b=6', '--pin', 'a=1', '--pin', 'b=1']))


def test_guest_name_of_this_process_is_none():
    assert guest_name_of(os.getpid()) is None


def test_checksums_are_chunked_and_independent_of_workers(tmp_path):
    a, b = tmp_path / 'a', tmp_path / 'b'
    data = os.urandom(3 << 20)
    a.write_bytes(data)
    b.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    one, _t = checksum_files([str(a), str(b)], 'sha1', chunk=1 << 20, workers=1)
    many, _t = checksum_files([str(a), str(b)], 'sha1', chunk=1 << 20, workers=4)
    assert one == many
    assert one[str(a)]['checksum'] != one[str(b)]['checksum']
    assert one[str(a)]['size'] == 3 << 20


def test_read_word_parses_xp_output():
    class FakeQMP:
        def command(self, name, args):
            assert args['command-line'] == 'xp /1wx 0xfebf1008'
            return '00000000febf1008: 0x00000003\r\n'
    assert read_word(FakeQMP(), 0xfebf1008) == 3


def test_accounts_are_made_all_or_none(monkeypatch):
    """A useradd that fails after others succeeded: the accounts this call made are removed again."""
    from ansible_collections.ivshmem.fleet.plugins.module_utils import _host
    made, removed = [], []

    def ensure_account(user, group, check_mode):
        if user == 'broken':
            raise _host.HostError('useradd failed: cannot lock /etc/passwd')
        made.append(user)
        return user != 'existing'

    monkeypatch.setattr(_host, 'ensure_account', ensure_account)
    monkeypatch.setattr(_host, 'run_program', lambda argv, timeout, user='nobody': removed.append(argv) or (0, '', ''))
    with pytest.raises(_host.HostError, match='cannot lock'):
        _host.ensure_accounts([('ivs-s', 'ivshmem'), ('existing', 'ivshmem'), ('ivg-m', 'ivshmem'), ('broken', 'ivshmem')])
    assert removed == [['userdel', 'ivg-m'], ['userdel', 'ivs-s']]  # never one that existed before


def test_a_link_or_fifo_put_where_a_memory_file_was_is_not_followed_or_waited_on(tmp_path):
    """Root hashes files in directories a server's account writes in: a link to a file of root's
    is not read, and a FIFO (opened for reading it would block until a writer came) is refused."""
    secret = tmp_path / 'secret'
    secret.write_bytes(b'root only')
    (tmp_path / 'link').symlink_to(secret)
    os.mkfifo(str(tmp_path / 'fifo'))
    with pytest.raises(OSError):  # ELOOP: O_NOFOLLOW
        checksum_files([str(tmp_path / 'link')], 'sha1')
    outcome = []

    def hash_fifo():
        try:
            checksum_files([str(tmp_path / 'fifo')], 'sha1')
        except ChecksumError as exc:
            outcome.append(str(exc))
    worker = threading.Thread(target=hash_fifo, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), 'blocked opening a FIFO'
    assert outcome and 'not a regular file' in outcome[0], outcome
