# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Peer IDs: pinned, never-used, then least recently freed."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections

from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_protocol import MAX_PEER_ID


class IdAllocator:
    """Peer IDs: a pinned name gets its ID; others get a never-used ID, else the least recently freed.

    A departed peer's ID comes back last, so a doorbell still aimed at it (from a guest that
    has not processed the departure yet) rings nobody rather than the next newcomer.
    """

    def __init__(self, pins, highest=MAX_PEER_ID):
        self.pins = dict(pins)
        self._highest = highest
        self._pinned = set(self.pins.values())
        self._in_use = set()
        self._next_fresh = 0
        self._freed = collections.OrderedDict()  # oldest first

    def take(self, name):
        """An ID for a guest of this name (None for an unnamed one), or None if there is none."""
        if name in self.pins:
            peer_id = self.pins[name]
            if peer_id in self._in_use:
                return None
        else:
            peer_id = self._fresh()
            if peer_id is None:
                if not self._freed:
                    return None
                peer_id = self._freed.popitem(last=False)[0]
        self._in_use.add(peer_id)
        return peer_id

    def _fresh(self):
        while self._next_fresh <= self._highest:
            peer_id = self._next_fresh
            self._next_fresh += 1
            if peer_id not in self._pinned:
                return peer_id
        return None

    def pinned(self, peer_id):
        return peer_id in self._pinned

    def free(self, peer_id):
        self._in_use.discard(peer_id)
        if peer_id not in self._pinned:
            self._freed.pop(peer_id, None)
            self._freed[peer_id] = None
