# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Sizes as upstream's ivshmem-server takes them (bytes, or K/M/G/T/P/E suffixed). Standard library
only: part of the builtin server's program, and the domain model checks sizes with it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

_SIZE_RE = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)\s*$', re.IGNORECASE)
_SUFFIX_SHIFT = {'': 0, 'b': 0, 'k': 10, 'm': 20, 'g': 30, 't': 40, 'p': 50, 'e': 60}


def parse_size(text):
    """Parse an upstream-style size (bytes, or K/M/G/T/P/E suffixed) into bytes."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError('invalid size %r' % text)
    number, suffix = match.groups()
    if '.' in number and not suffix:
        raise ValueError('invalid size %r: a fraction needs a suffix' % text)
    if len(number) > 30:  # beyond any memory: refused before arithmetic
        raise ValueError('invalid size %r: too large' % text)
    whole, _dot, fraction = number.partition('.')
    shift = _SUFFIX_SHIFT[suffix.lower()]
    value = (int(whole) << shift) + (int(fraction) << shift) // 10 ** len(fraction) if fraction else int(whole) << shift
    if value <= 0:
        raise ValueError('invalid size %r: must be positive' % text)
    return value


def round_up_power_of_two(value):
    """The device's BAR is a power of two: upstream rounds the size up the same way."""
    return 1 << (value - 1).bit_length()
