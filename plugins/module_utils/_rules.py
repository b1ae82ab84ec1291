# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Rules the modules and the server program share, each written once: names, one account per
guest, squatted memory names, stale sockets, atomic writes.

Standard library only: ``_server.builtin_program`` ships this file inside the server's zipapp,
so the server on a host and the modules that start it apply the same rule.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import stat

# The names of servers, guests, groups and memories the modules take (letters, digits, "_", "."
# and "-", at most 64). \Z, not $: a name with a trailing newline is no name ($ matches before it).
NAME_PATTERN = r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z'
NAME_RE = re.compile(NAME_PATTERN)
# The names the server program takes (-M, --account, --pin, --hold, the control request admit):
# every name the modules take, and more ("+", up to 128), as a drop-in for upstream's -M.
PROGRAM_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}\Z')


def shared_account(accounts):
    """The first two guests that run as one account, as (earlier, later, account); else None.

    ``accounts``: {guest: the account it runs as, a name or a uid}. A server tells its guests
    apart by their account (SO_PEERCRED), so each guest needs its own. Guests are taken in
    sorted order, so the pair named is always the same.
    """
    seen = {}
    for name, account in sorted(accounts.items()):
        if account in seen:
            return seen[account], name, account
        seen[account] = name
    return None


def squatted(info, uid):
    """Is the file ``info`` (an lstat or fstat result) at a server's memory name another's? Only
    a plain file of the server's account ``uid`` with one link (one a crashed server left) may be
    there: a name another account made first (to read or write the group's memory), a link or
    anything else is refused. The server checks the file it opened; the server module checks
    before it starts QEMU's server, which opens the name without O_EXCL."""
    return not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != uid


def remove_stale_socket(path, listening, error):
    """Remove the UNIX socket file ``path`` if no process listens on it (one left by a killed
    process); anything else at the path (a file, a link, a directory) is ``error``, never removed.

    ``listening(path)``: whether a process listens there, which the caller tells its own way (the
    modules read /proc/net/unix, as upstream's server exits when a client connects and leaves; the
    server connects). Returns None if there was nothing, False if the socket is live, True if removed.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(info.st_mode):
        raise error('%s exists and is not a socket' % path)
    if listening(path):
        return False
    os.unlink(path)
    return True


def write_atomic(path, data, mode, exact_mode=True):
    """Replace ``path`` with ``data`` (bytes, or text written as UTF-8) at once: a reader sees the
    old file or the new one, never part of one.

    Written to a fresh temporary file beside it (created exclusively, so never through a link
    planted there), renamed over, and removed if anything fails. ``exact_mode``: the file gets
    ``mode`` as given; else the process's umask applies to it, as to any file it creates.
    """
    if not isinstance(data, bytes):
        data = data.encode('utf-8')
    directory, base = os.path.split(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        tmp = os.path.join(directory or '.', '.%s.%s' % (base, os.urandom(6).hex()))
        try:
            fd = os.open(tmp, flags, 0o600 if exact_mode else mode)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
            if exact_mode:
                os.fchmod(handle.fileno(), mode)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
