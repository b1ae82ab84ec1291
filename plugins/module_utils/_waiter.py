# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one waiting utility: a monotonic clock, a timeout, and the time waited returned.

Readiness conditions are functions returning a truthy value when ready; the table of
the conditions the collection gates on lives in _readiness.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError


class WaitTimeout(FleetError):
    """A condition did not hold before its timeout."""

    def __init__(self, what, waited, last_error=None):
        message = 'timed out after %.1f s waiting for %s' % (waited, what)
        if last_error:
            message += ' (last: %s)' % last_error
        super(WaitTimeout, self).__init__(message)
        self.what = what
        self.waited = waited
        self.last_error = last_error


def wait_for(what, condition, timeout, interval=0.1, retry_on=(), clock=time.monotonic, sleep=time.sleep, max_interval=1.0):
    """Poll ``condition()`` until it returns a truthy value.

    Returns (value, seconds waited). Exceptions in ``retry_on`` count as "not yet" and the
    last one is reported on timeout. Polls back off up to ``max_interval`` seconds between tries.
    """
    start = clock()
    last_error = None
    delay = interval
    while True:
        try:
            value = condition()
        except retry_on as exc:
            value, last_error = None, exc
        waited = clock() - start
        if value:
            return value, waited
        if waited >= timeout:
            raise WaitTimeout(what, waited, last_error)
        sleep(min(delay, max(0.0, timeout - waited)))
        delay = min(delay * 1.5, max_interval)
