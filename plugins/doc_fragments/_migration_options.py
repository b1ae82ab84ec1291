# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    # The migration options ivshmem.fleet.migrate (one host) and ivshmem.fleet.group_migrate
    # (between hosts) share: module_utils/_options.py MIGRATION_ARGS, checked against it by
    # tests/unit/plugins/test_options.py.
    DOCUMENTATION = r'''
options:
  max_bandwidth:
    description: Migration bandwidth limit in bytes per second.
    type: int
    default: 10737418240
  downtime_limit:
    description: QEMU's downtime limit (the longest tolerated downtime) in milliseconds.
    type: int
    default: 300
  checksum:
    description:
      - Hash used per 32 MiB chunk of shared memory; a memory's checksum is the sha256 of its chunk
        digests, labelled for example C(chunked-crc32-32MiB:...) (it is not the C(crc32) or C(sha1sum)
        of the memory file).
      - The checksum guards against memory lost or mixed up on the way, not against an attacker (the
        TLS stream is authenticated). C(crc32) is the fastest here (about 0.19 s per GiB on two cores
        against 0.35 s for C(sha1)), and the destination's hash is part of the master's outage.
    type: str
    choices: [crc32, sha1, sha256, blake2b]
    default: crc32
'''
