# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Where a host keeps what the collection runs: every path, built in one place.

The runtime directory (``runtime_dir``, default ``/run/ivshmem-fleet``)::

    servers/NAME/    ivshmem.sock, control.sock, server.pid, server.log, spec.json, process.json
    regions/NAME/    spec.json (a plain group's shared memory, made by root: _region.py)
    guests/NAME/     qmp.sock, incoming.sock, qemu.pid, qemu.log, console.log, spec.json,
                     migration.json
    moves/           GROUP.json (a move's journal and lock record), .lock
    qemu/            what each QEMU binary offers (_qemu_binary.py)
    tls-handover/    key copies QEMU reads while it loads migration credentials (_tls.py)

and outside it, a server's shared memory (``/dev/shm/SHM_NAME``, or ``memory_dir/SHM_NAME``) and
the builtin server program (``program_dir/ivshmem-fleet-server.pyz``) with the host-side peer
(``program_dir/ivshmem-fleet-peer.pyz``).

Pure: nothing here reads or writes the disk. Making directories and checking who owns them is the
host supervision's (``_host.py``, ``_host_converge.py``, the managers); listing what a directory
holds is ``_host.names``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.ivshmem.fleet.plugins.module_utils._options import DEFAULT_RUNTIME_DIR

SHM_DIR = '/dev/shm'
PROGRAM_NAME = 'ivshmem-fleet-server.pyz'
PEER_PROGRAM_NAME = 'ivshmem-fleet-peer.pyz'
# The kinds of directories under the runtime directory that hold one entry per name.
KINDS = ('servers', 'guests', 'moves', 'regions')


class Layout:
    """Every path of a host's servers, guests, moves and their shared files, from ``runtime_dir``."""

    def __init__(self, runtime_dir=DEFAULT_RUNTIME_DIR):
        # Imported here: _model re-exports Layout (its long-standing home), so a top-level import
        # would be circular. The check is pure (an absolute path, normalized).
        from ansible_collections.ivshmem.fleet.plugins.module_utils._model import check_path
        self.runtime_dir = check_path('runtime_dir', runtime_dir)

    def kind_dir(self, kind):
        """``servers``, ``guests``, ``moves`` or ``regions``: the directory that holds one entry per name."""
        if kind not in KINDS:
            raise ValueError('no directory of kind %r' % (kind,))
        return os.path.join(self.runtime_dir, kind)

    # --- regions (plain shared memory) ---------------------------------------------------
    def region_record(self, name):
        """Root's record of region ``name`` (what it made, so what it may remove)."""
        return os.path.join(self.kind_dir('regions'), name, 'spec.json')

    # --- servers --------------------------------------------------------------------------
    def server_dir(self, name):
        return os.path.join(self.kind_dir('servers'), name)

    def server_socket(self, name):
        return os.path.join(self.server_dir(name), 'ivshmem.sock')

    def server_control(self, name):
        return os.path.join(self.server_dir(name), 'control.sock')

    def server_pidfile(self, name):
        return os.path.join(self.server_dir(name), 'server.pid')

    def server_paths(self, name):
        """A server's directory and files: dir, socket, control, pidfile, log, record (spec.json)
        and held (process.json: the process root saw listening, for the daemon supervisor)."""
        directory = self.server_dir(name)
        return {'dir': directory, 'socket': self.server_socket(name), 'control': self.server_control(name),
                'pidfile': self.server_pidfile(name), 'log': os.path.join(directory, 'server.log'),
                'record': os.path.join(directory, 'spec.json'), 'held': os.path.join(directory, 'process.json')}

    def server_record(self, name):
        return self.server_paths(name)['record']

    @staticmethod
    def server_memory(shm_name, memory_dir=None):
        """A server's shared memory file: ``shm_name`` in ``memory_dir``, else in /dev/shm."""
        return os.path.join(memory_dir or SHM_DIR, shm_name)

    def hugetlbfs(self, page_size):
        """Where servers and regions keep memory on huge pages of ``page_size`` (``2M``, ``1G``):
        a hugetlbfs of the fleet's own (_hugepages.py mounts it), not /dev/hugepages, which a
        host may lack or keep root's alone."""
        return os.path.join(self.runtime_dir, 'hugepages-%s' % page_size)

    @staticmethod
    def program(program_dir):
        """The builtin server's zipapp in ``program_dir`` (a server option, outside runtime_dir)."""
        return os.path.join(program_dir, PROGRAM_NAME)

    @staticmethod
    def peer_program(program_dir):
        """The host-side peer's zipapp, installed beside the server's."""
        return os.path.join(program_dir, PEER_PROGRAM_NAME)

    # --- guests ---------------------------------------------------------------------------
    def guest_dir(self, name):
        return os.path.join(self.kind_dir('guests'), name)

    def guest_qmp(self, name):
        return os.path.join(self.guest_dir(name), 'qmp.sock')

    def guest_console(self, name):
        return os.path.join(self.guest_dir(name), 'console.log')

    def incoming_uri(self, name):
        """The migration URI a guest started ``-incoming defer`` listens on."""
        return 'unix:' + os.path.join(self.guest_dir(name), 'incoming.sock')

    def guest_paths(self, name):
        """A guest's directory and files: dir, qmp, pidfile, log (QEMU's), console, record (spec.json)."""
        directory = self.guest_dir(name)
        return {'dir': directory, 'qmp': self.guest_qmp(name), 'pidfile': os.path.join(directory, 'qemu.pid'),
                'log': os.path.join(directory, 'qemu.log'), 'console': self.guest_console(name),
                'record': os.path.join(directory, 'spec.json')}

    def guest_migration(self, name):
        """The record of a migrate module's migration of guest ``name`` (its phase)."""
        return os.path.join(self.guest_dir(name), 'migration.json')

    # --- host-wide ------------------------------------------------------------------------
    def moves_dir(self):
        return self.kind_dir('moves')

    def move_record(self, group):
        """A group's move record on this host: the lock and the journal step."""
        return os.path.join(self.moves_dir(), '%s.json' % group)

    def move_lock(self):
        """The file whose flock serializes this host's move records."""
        return os.path.join(self.moves_dir(), '.lock')

    def qemu_cache(self):
        """Where what each QEMU binary offers is kept (_qemu_binary.py)."""
        return os.path.join(self.runtime_dir, 'qemu')

    def tls_handover(self):
        """Where QEMU is handed copies of the migration credentials it loads (_tls.py)."""
        return os.path.join(self.runtime_dir, 'tls-handover')
