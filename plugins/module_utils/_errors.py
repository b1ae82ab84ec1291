# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one root of the collection's errors (FleetError), and bad input naming its field
(ValidationError). Every error class of the collection derives from FleetError, so a caller
reports any of them as its message (_module.run_manager), never as a traceback. Imported by the
builtin server program too (_server.builtin_program ships it): no imports here."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class FleetError(Exception):
    """Something ivshmem.fleet could not do; the message says what and why."""


class ValidationError(FleetError):
    """Bad input; the message starts with the offending field."""

    def __init__(self, field, message):
        super(ValidationError, self).__init__('%s: %s' % (field, message))
        self.field = field
