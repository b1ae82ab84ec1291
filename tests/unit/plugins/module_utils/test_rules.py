import os
import socket
import stat

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._rules import (
    NAME_RE, PROGRAM_NAME_RE, remove_stale_socket, shared_account, squatted, write_atomic)


@pytest.mark.parametrize('name', ['a', 'g1', 'A.b_c-d', 'x' * 64, '0peer'])
def test_every_name_the_modules_take_the_server_takes(name):
    assert NAME_RE.match(name) and PROGRAM_NAME_RE.match(name)


@pytest.mark.parametrize('name', ['', '-a', '.a', 'a/b', 'a b', 'a\n', 'a;b', 'x' * 129])
def test_names_neither_takes(name):
    assert not NAME_RE.match(name) and not PROGRAM_NAME_RE.match(name)


def test_the_server_takes_upstream_names_the_modules_do_not():
    assert PROGRAM_NAME_RE.match('a+b') and not NAME_RE.match('a+b')
    assert PROGRAM_NAME_RE.match('x' * 128) and not NAME_RE.match('x' * 65)


def test_shared_account_names_the_first_pair_in_name_order():
    assert shared_account({}) is None
    assert shared_account({'a': 1, 'b': 2}) is None
    assert shared_account({'d': 'u', 'c': 'v', 'b': 'u', 'a': 'v'}) == ('a', 'c', 'v')
    assert shared_account({'p': 5, 'm': 5, 'q': 5}) == ('m', 'p', 5)


class Refused(Exception):
    pass


def test_stale_socket_is_removed_live_one_kept_and_nothing_else_touched(tmp_path):
    path = str(tmp_path / 's.sock')
    assert remove_stale_socket(path, lambda p: False, Refused) is None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()
    assert remove_stale_socket(path, lambda p: True, Refused) is False and os.path.exists(path)
    assert remove_stale_socket(path, lambda p: False, Refused) is True and not os.path.exists(path)
    with open(path, 'w'):
        pass
    with pytest.raises(Refused, match='exists and is not a socket'):
        remove_stale_socket(path, lambda p: False, Refused)
    assert os.path.exists(path)


def test_write_atomic_replaces_a_planted_link_and_leaves_no_temporary(tmp_path):
    target = tmp_path / 'target'
    target.write_text('keep')
    path = tmp_path / 'file'
    os.symlink(str(target), str(path))
    write_atomic(str(path), 'new\n', 0o640)
    assert not path.is_symlink() and path.read_text() == 'new\n' and target.read_text() == 'keep'
    assert stat.S_IMODE(os.stat(str(path)).st_mode) == 0o640
    write_atomic(str(path), b'bytes', 0o600)
    assert path.read_bytes() == b'bytes' and sorted(os.listdir(str(tmp_path))) == ['file', 'target']


def test_write_atomic_applies_the_umask_unless_the_mode_is_exact(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomic(str(tmp_path / 'pid'), '1\n', 0o644, exact_mode=False)
        write_atomic(str(tmp_path / 'exact'), '1\n', 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(str(tmp_path / 'pid')).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(str(tmp_path / 'exact')).st_mode) == 0o644


def test_write_atomic_removes_its_temporary_on_failure(tmp_path):
    os.mkdir(str(tmp_path / 'dir'))  # a file cannot be renamed over a directory
    with pytest.raises(OSError):
        write_atomic(str(tmp_path / 'dir'), 'x', 0o644)
    assert os.listdir(str(tmp_path)) == ['dir']


def test_squatted_memory_is_anything_but_a_plain_file_of_the_account_with_one_link(tmp_path):
    mine = tmp_path / 'mine'
    mine.write_bytes(b'')
    uid = os.geteuid()
    assert not squatted(os.lstat(str(mine)), uid)
    assert squatted(os.lstat(str(mine)), uid + 1)  # another account's
    os.link(str(mine), str(tmp_path / 'hard'))
    assert squatted(os.lstat(str(mine)), uid)  # a second name for it
    os.symlink(str(mine), str(tmp_path / 'link'))
    assert squatted(os.lstat(str(tmp_path / 'link')), uid)
    assert squatted(os.lstat(str(tmp_path)), uid)  # a directory
