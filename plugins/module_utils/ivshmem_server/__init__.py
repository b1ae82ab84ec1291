# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""ivshmem.fleet's ivshmem server: a production replacement for QEMU's contrib ivshmem-server.

Wire-compatible with ivshmem-doorbell and a drop-in for the upstream options
(-S -M -m -l -n -F -p -v). On top of upstream it never refuses or drops a healthy
client: messages a client's socket cannot take yet wait in a per-client queue, and
only a client that stops reading (a backlog beyond --max-backlog) is dropped. It
serves as many clients as the fd limit allows, hands out IDs never-used first then
least recently freed, knows guests by their account (--account NAME=UID, matched with
SO_PEERCRED: a process cannot choose it, unlike its -name) to pin their IDs, admit only
them (--admit-accounts-only; root adds a guest's account with the control request
"admit") and hold admission for a master, answers status queries on a control socket, and
recovers from a stale socket.

The program by concern, each module importing only what it needs:

- ``config``: its settings (``Config``), their cross-checks and ``ServerError``;
- ``ids``: the peer ID allocator;
- ``clients``: one connected guest and what it has yet to read;
- ``admission``: who may join, and the join itself (the handshake, the announcements);
- ``loop``: the server (``IvshmemServer``): memory, sockets, the event loop, sending, departures;
- ``control``: the control socket (status, hold, release, admit);
- ``system``: the host's facilities (fd limit, stale sockets, systemd readiness);
- ``cli``: the command line, logging and the daemon (``main``).

What it shares with the modules (names, one account per guest, stale sockets, atomic writes)
it imports from ``module_utils/_rules.py``, which the zipapp carries too.

Standard library only (Python >= 3.10 for os.eventfd): the modules ship this package to
managed hosts inside a zipapp (``_server.builtin_program``), and the tests run it directly
(``python -c 'from ...ivshmem_server.cli import main; main()'``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type
