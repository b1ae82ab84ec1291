"""The one /proc/net/unix parser behind unix_listening and socket_owner."""

import os
import socket

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host

HEADER = 'Num       RefCount Protocol Flags    Type St Inode Path\n'


def test_parser_takes_listening_sockets_of_the_path_only(tmp_path):
    table = tmp_path / 'unix'
    table.write_text(HEADER +
                     '0000: 00000002 00000000 00010000 0001 01 101 /run/x/a.sock\n'   # listening
                     '0000: 00000002 00000000 00000000 0001 03 102 /run/x/a.sock\n'   # a connection
                     '0000: 00000002 00000000 00010000 0001 01 103 /run/x/b.sock\n'
                     '0000: 00000002 00000000 00010000 0001 01 104\n')                # unnamed
    assert list(_host._unix_listeners(str(table), '/run/x/a.sock')) == ['101']
    assert list(_host._unix_listeners(str(table), '/run/x/c.sock')) == []


def test_an_empty_table_is_no_listener(tmp_path):
    table = tmp_path / 'unix'
    table.write_text('')
    assert list(_host._unix_listeners(str(table), '/run/x/a.sock')) == []


def test_a_live_socket_is_seen_by_both(tmp_path):
    path = str(tmp_path / 's.sock')
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(path)
        assert not _host.unix_listening(path) and _host._listening_inodes(path) == set()
        server.listen(1)
        assert _host.unix_listening(path) and _host.unix_listening(path, os.getpid())
        assert _host._listening_inodes(path) == set([str(os.fstat(server.fileno()).st_ino)])
    finally:
        server.close()
