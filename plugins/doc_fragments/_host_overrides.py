# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    # What differs on one host from the inventory's groups: module_utils/_options.py
    # OVERRIDE_ARGS, applied by _groups.overridden (ivshmem.fleet.host, ivshmem.fleet.move_host).
    DOCUMENTATION = r'''
options:
  server_overrides:
    description:
      - Server options that differ on this host, over those of every server here (for example
        O(ivshmem.fleet.server#module:memory_dir)). The playbooks pass the host variable
        C(ivshmem_fleet_server_overrides).
    type: dict
    default: {}
  guest_overrides:
    description:
      - Guest options that differ on this host, over those of every guest here (for example
        O(ivshmem.fleet.guest#module:binary) where this host's QEMU is elsewhere). The playbooks
        pass the host variable C(ivshmem_fleet_guest_overrides).
    type: dict
    default: {}
'''
