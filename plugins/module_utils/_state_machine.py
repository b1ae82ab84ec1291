# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A small base for state-driven managers: one method per state (``state_<name>``)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class StateMachine:
    def __init__(self, check_mode):
        self.check_mode = check_mode
        self.changed = False
        self.warnings = []
        self.before = {}
        self.after = {}
        self.result = {}

    def run(self, state):
        getattr(self, 'state_' + state)()
        return dict(self.result, changed=self.changed, warnings=self.warnings,
                    diff={'before': self.before, 'after': self.after})

    def change(self, action):
        """Record a change; returns True when it should really be done (not in check mode)."""
        self.changed = True
        return not self.check_mode
