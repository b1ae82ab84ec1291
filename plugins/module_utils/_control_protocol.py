# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The builtin server's control protocol: one JSON request line, one JSON response line.

Requests: {"command": "status"}, {"command": "hold", "master": NAME}, {"command": "release"}.
Responses: {"return": STATUS} or {"error": TEXT}. Standard library only (shipped to hosts).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError


class ControlError(FleetError):
    """A control request failed or could not be understood."""


def read_request(data):
    try:
        request = json.loads(data.split(b'\n', 1)[0].decode('utf-8'))
    except (ValueError, RecursionError):  # RecursionError: a request nested thousands deep
        raise ControlError('request is not one JSON line')
    if not isinstance(request, dict):
        raise ControlError('request is not a JSON object')
    return request


def encode_response(response):
    return json.dumps(response, sort_keys=True).encode('utf-8') + b'\n'


def control_request(path, command, timeout=5.0, **arguments):
    """Send one request to a server's control socket and return its result."""
    request = dict(arguments, command=command)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(request).encode('utf-8') + b'\n')
        data = b''
        while not data.endswith(b'\n'):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise ControlError('control socket %s: %s' % (path, exc))
    finally:
        sock.close()
    try:
        response = json.loads(data.decode('utf-8'))
    except ValueError:
        raise ControlError('control socket %s: no valid response' % path)
    if 'error' in response:
        raise ControlError(response['error'])
    return response['return']
