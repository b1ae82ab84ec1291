# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    # Options every ivshmem.fleet module takes.
    DOCUMENTATION = r'''
options:
  runtime_dir:
    description:
      - Directory where the collection keeps each server's and guest's sockets, pidfiles, logs and
        recorded settings (C(servers/NAME) and C(guests/NAME) below it).
      - Every module acting on the same servers and guests must use the same directory.
    type: path
    default: /run/ivshmem-fleet
requirements:
  - Python 3.10 or newer on the managed host (standard library only).
  - QEMU (C(qemu-system-x86_64)) on the managed host for guests.
notes:
  - Modules run as root on the hypervisor host; guests and servers run as an unprivileged
    service account, which the modules create when it is missing.
'''

    ATTRIBUTES = r'''
attributes:
  check_mode:
    support: full
    description: Can run in check_mode and return changed status prediction without modifying target.
  diff_mode:
    support: full
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
  idempotent:
    support: full
    description: When run twice in a row with the same arguments, the second run reports no change.
  platform:
    support: full
    platforms: posix
    description: Target OS/families that can be operated against.
'''
