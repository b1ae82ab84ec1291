# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The host's facilities the server uses: fd limit, stale sockets, files removed, systemd readiness."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import resource
import socket

from ansible_collections.ivshmem.fleet.plugins.module_utils import _rules
from ansible_collections.ivshmem.fleet.plugins.module_utils.ivshmem_server.config import ServerError


def remove_stale_socket(path):
    """A socket left by a killed server is removed; a live one or a non-socket is an error."""
    if _rules.remove_stale_socket(path, _listening, ServerError) is False:
        raise ServerError('another server is listening on %s' % path)


def _listening(path):
    """Whether a process listens on the socket ``path``: found by connecting to it."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        raise ServerError('cannot probe %s: %s' % (path, exc))
    finally:
        probe.close()
    return True


def raise_fd_limit():
    """Raise the soft fd limit to the hard one (each client costs 1 + vectors fds); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def sd_notify(message):
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
