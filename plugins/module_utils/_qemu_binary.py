# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What a QEMU binary offers: its version, machine types (and what each alias stands for) and the
ivshmem devices (RHEL's qemu-kvm builds have none).

Learned once per binary file (its path, inode, size and modification time: an upgrade replaces
the file) and kept in ``<runtime_dir>/qemu/``, so a move's inspect or a guest's start asks QEMU
only the first time. The probes run as nobody: root never runs a guest's binary with privileges.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import re

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import MACHINE_ALIASES, machine_name

IVSHMEM_DEVICES = ('ivshmem-doorbell', 'ivshmem-plain')
PROBE_TIMEOUT = 30
_VERSION_RE = re.compile(r'QEMU emulator version (\S+)(?: \((.*)\))?')
_MACHINE_RE = re.compile(r'^(\S+)\s+(.*)$')
_ALIAS_RE = re.compile(r'\(alias of (\S+)\)')
# Bump when what a probe records changes: older cache files are then not read.
_FORMAT = 1


class QemuBinaryError(ValidationError):
    """A guest's QEMU cannot do what the guest asks; the field is the option that asks it."""


def cache_dir(layout, check_mode=False):
    """Where what binaries offer is kept; None in check mode (nothing is written then)."""
    return None if check_mode else layout.qemu_cache()


def parse_version(text):
    """(version, distribution package or None) from ``qemu --version``."""
    match = _VERSION_RE.search(text or '')
    return (match.group(1), match.group(2)) if match else (None, None)


def parse_machines(text):
    """{'machines': [versioned and other types], 'aliases': {alias: type}, 'default': type} from
    ``qemu -machine help``."""
    machines, aliases, default = [], {}, None
    for line in (text or '').splitlines():
        match = _MACHINE_RE.match(line)
        if not match or line.startswith('Supported machines'):
            continue
        name, description = match.groups()
        alias = _ALIAS_RE.search(description)
        if alias:
            aliases[name] = alias.group(1)
        else:
            machines.append(name)
        if '(default)' in description:
            default = name
    return {'machines': sorted(machines), 'aliases': aliases, 'default': default}


def _probe(binary):
    status, out, err = _host.run_program([binary, '--version'], PROBE_TIMEOUT)
    version, package = parse_version(out)
    if status != 0 or version is None:
        raise _host.HostError('%s is not a QEMU that answers --version: %s' % (binary, (err or out).strip()[:200]))
    _status, out, _err = _host.run_program([binary, '-machine', 'help'], PROBE_TIMEOUT)
    caps = dict(parse_machines(out), binary=binary, present=True, version=version, package=package, format=_FORMAT)
    devices = []
    for device in IVSHMEM_DEVICES:
        # '-device NAME,help' lists the device's options, or says it is not found (exit 0 both).
        _status, out, err = _host.run_program([binary, '-device', device + ',help'], PROBE_TIMEOUT)
        if 'not found' not in err and out.strip():
            devices.append(device)
    caps['devices'] = devices
    return caps


def capabilities(binary, directory=None):
    """What ``binary`` offers (see parse_machines), with ``version``, ``package``, ``devices``;
    ``{'binary': ..., 'present': False}`` where there is no such file. ``directory``: the cache."""
    try:
        info = os.stat(binary)
    except OSError:
        return {'binary': binary, 'present': False}
    key = '%s:%d:%d:%d:%d' % (os.path.realpath(binary), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    path = os.path.join(directory, hashlib.sha256(key.encode('utf-8')).hexdigest()[:24] + '.json') if directory else None
    cached = _host.read_json(path) if path else None
    if cached and cached.get('format') == _FORMAT and cached.get('binary') == binary:
        return cached
    caps = _probe(binary)
    if path and os.path.isdir(os.path.dirname(directory)):  # kept where the runtime directory is, never made for it
        _host.ensure_dir(directory, 0o700)
        _host.write_json(path, caps, 0o600)
    return caps


def installed(binary, directory=None):
    """What the hypervisor's QEMU at ``binary`` is, for reports: its ``version``, distribution
    ``package`` and ``default_machine`` (what ``pc`` means there); None where it is not installed."""
    if not os.path.isfile(binary):
        return None
    try:
        caps = capabilities(binary, directory)
    except _host.HostError as exc:
        return {'binary': binary, 'error': str(exc)}
    return {'binary': binary, 'version': caps.get('version'), 'package': caps.get('package'),
            'default_machine': caps.get('aliases', {}).get('pc') or caps.get('default'),
            'machines': caps.get('machines', [])}


def offers_machine(caps, machine):
    """Does this QEMU run ``machine`` (a type or an alias, options ignored)?"""
    name = machine_name(machine)
    return name in caps.get('machines', ()) or name in caps.get('aliases', {})


def describe(caps):
    """``QEMU 7.2.22 at /usr/bin/qemu-system-x86_64`` (or that none is there)."""
    if not caps.get('present'):
        return 'no QEMU at %s' % caps.get('binary')
    return 'QEMU %s at %s' % (caps.get('version'), caps.get('binary'))


def versioned_range(caps, machine):
    """The versioned types of ``machine``'s family this QEMU runs, as ``pc-i440fx-2.0 .. 7.2``
    (for error messages), or None."""
    name = machine_name(machine)
    family = MACHINE_ALIASES.get(name) or next((f for f in MACHINE_ALIASES.values() if name.startswith(f)), None)
    if family is None:
        return None
    versions = []
    for candidate in caps.get('machines', ()):
        rest = candidate[len(family):] if candidate.startswith(family) else ''
        if re.match(r'^\d+\.\d+$', rest):
            versions.append((tuple(int(p) for p in rest.split('.')), rest))
    if not versions:
        return None
    versions.sort()
    return '%s%s .. %s' % (family, versions[0][1], versions[-1][1])


def check_guest(caps, machine, device_types, host=None):
    """Refuse, naming the option, a guest this QEMU cannot run: no binary, a machine type it does
    not offer, an ivshmem device it lacks. ``host`` names where (for messages)."""
    where = ' on %s' % host if host else ''
    if not caps.get('present'):
        raise QemuBinaryError('binary', 'no QEMU at %s%s' % (caps.get('binary'), where))
    if not offers_machine(caps, machine):
        offered = versioned_range(caps, machine)
        raise QemuBinaryError('machine', '%s%s does not offer machine type %s%s' % (
            describe(caps), where, machine_name(machine),
            ' (it runs %s: a QEMU runs the versioned types of its own version and older)' % offered if offered else ''))
    lacking = [device for device in device_types if device not in caps.get('devices', ())]
    if lacking:
        raise QemuBinaryError('ivshmem', '%s%s has no %s device (a QEMU built without ivshmem, as RHEL\'s '
                                         'qemu-kvm)' % (describe(caps), where, ', '.join(lacking)))
