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


class ServiceAdapter(StateMachine):
    """A module's adapter over a domain service (one guest, one server: _guest.Guest,
    _server.Server): the service does the work; the state methods decide what changes from the
    status read when the task began (``current``), and report it (``view``: before and after)."""

    def __init__(self, service, current, check_mode):
        super(ServiceAdapter, self).__init__(check_mode)
        self.spec = service.spec
        self.current = current
        self.before = self.view(current)
        self.after = dict(self.before)

    @staticmethod
    def view(status):
        raise NotImplementedError
