# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The domain model: servers, guests and their ivshmem devices.

Specs are built from module parameters, validated with errors that name the field,
and turned into command lines. Pure logic: no I/O here, so unit tests cover it all.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import re

from ansible.module_utils.common.parameters import DEFAULT_TYPE_VALIDATORS
from ansible.module_utils.common.validation import check_type_str

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_protocol import MAX_PEER_ID, MAX_VECTORS
from ansible_collections.ivshmem.fleet.plugins.module_utils._layout import Layout  # noqa: F401 (re-exported: callers import it from here)
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import (
    DISK_ARGS, DISK_DEFAULTS, GUEST_ARGS, GUEST_DEFAULTS, GUEST_FIELDS, IVSHMEM_ARGS, IVSHMEM_DEFAULTS,
    HUGEPAGE_SIZES, REGION_DEFAULTS, REGION_FIELDS, SERVER_ARGS, SERVER_DEFAULTS, SERVER_FIELDS, SERVICE_GROUP)
from ansible_collections.ivshmem.fleet.plugins.module_utils._rules import NAME_RE, shared_account
from ansible_collections.ivshmem.fleet.plugins.module_utils._sizes import parse_size

MIN_SHM_SIZE = 4096
MAX_SHM_SIZE = 1 << 40
UPSTREAM_MAX_SIZE = 1 << 30  # contrib ivshmem-server fails above 1 GiB
HOTPLUG_FIRST_SLOT = 0x10  # PCI slot (and q35 root port chassis) of a hotplug-placed ivshmem0
TCG_TB_SIZE_MIB = 64  # QEMU 7.2's default TCG buffer is 1 GiB per guest
RAM_BACKEND = 'pc.ram'  # the pc and q35 machines' RAM block
# Every server and guest runs under its own account (``ivs-NAME``, ``ivg-NAME``), all in the
# group SERVICE_GROUP (_options.py): it opens the servers' sockets and reads the migration
# credentials. A server admits and pins by the account (SO_PEERCRED), which a process cannot
# choose, never by a name.
_ACCOUNT_RE = re.compile(r'^[a-z0-9_-]{1,27}\Z')


def _account(prefix, name):
    """``prefix-name`` where that is a valid system account name of at most 31 characters; else a
    readable part of the name and a hash of all of it (names are case-sensitive, accounts not)."""
    if _ACCOUNT_RE.match(name) and len(prefix) + 1 + len(name) <= 31:
        return '%s-%s' % (prefix, name)
    readable = re.sub(r'[^a-z0-9_-]', '_', name.lower())[:17]
    return '%s-%s-%s' % (prefix, readable, hashlib.sha256(name.encode('utf-8')).hexdigest()[:8])


# Accounts and groups a server or guest never runs as: root, and groups that reach raw disks, the
# password hashes, sudo, the logs or a container engine (a guest escape would own the host).
PRIVILEGED_USERS = ('root',)
PRIVILEGED_GROUPS = ('root', 'disk', 'shadow', 'sudo', 'wheel', 'adm', 'staff', 'docker', 'lxd', 'systemd-journal')


MAX_ACCOUNT_NAME = 32  # useradd and groupadd refuse longer names


def check_account(field, value):
    """An account or group name: a name useradd and groupadd take."""
    check_name(field, value)
    if len(value) > MAX_ACCOUNT_NAME:
        raise ValidationError(field, '%r is longer than the %d characters an account name may have' % (
            value, MAX_ACCOUNT_NAME))
    return value


def _user_and_group(params, own_account):
    """A process's account and group: by default its own account in the service group."""
    user = check_account('user', params.get('user') or own_account)
    group = check_account('group', params.get('group') or (SERVICE_GROUP if user == own_account else user))
    if user in PRIVILEGED_USERS:
        raise ValidationError('user', '%s: servers and guests run unprivileged, each under its own account (leave '
                                      'user unset)' % user)
    if group in PRIVILEGED_GROUPS:
        raise ValidationError('group', '%s is a privileged group (it reaches %s): servers and guests never run in '
                                       'it' % (group, 'the host\'s disks' if group == 'disk' else 'more than its own'))
    return user, group


def guest_account(name):
    """The account guest ``name``'s QEMU runs as, unless its ``user`` says otherwise."""
    return _account('ivg', name)


def host_peer_account(params, name):
    """The account a group's host-side peer ``name`` runs as (``params``: its ``user``): by default
    its own, ``ivh-NAME``; never a privileged one."""
    return _user_and_group(params, _account('ivh', name))[0]


def server_account(name):
    """The account server ``name`` runs as and owns its memory and sockets, unless ``user`` says otherwise."""
    return _account('ivs', name)


def prefixed(prefix, build):
    """``build()``, with any ValidationError's field placed under ``prefix`` (``guests[2].memory``)."""
    try:
        return build()
    except ValidationError as exc:
        raise ValidationError('%s.%s' % (prefix, exc.field), str(exc).split(': ', 1)[1])


def check_name(field, value):
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValidationError(field, '%r is not a valid name (letters, digits, "_", "." and "-", '
                                     'at most 64, no path or shell characters)' % (value,))
    return value


def check_size(field, value, minimum=MIN_SHM_SIZE, maximum=MAX_SHM_SIZE, power_of_two=True):
    try:
        size = int(value) if isinstance(value, int) else parse_size(value)
    except (TypeError, ValueError):
        raise ValidationError(field, '%r is not a size (bytes, or a number with K, M, G or T)' % (value,))
    if size < minimum or size > maximum:
        raise ValidationError(field, '%d bytes is outside %d..%d' % (size, minimum, maximum))
    if power_of_two and size & (size - 1):
        raise ValidationError(field, '%d bytes is not a power of two (the ivshmem BAR must be)' % size)
    return size


# Bytes of each huge page size (_options.HUGEPAGE_SIZES).
HUGEPAGE_BYTES = {'2M': 2 << 20, '1G': 1 << 30}


def check_hugepages(field, value, size=None, size_field='size'):
    """A huge page size (``2M``, ``1G``) or None; ``size``: bytes that must be whole pages of it."""
    if value is None:
        return None
    if value not in HUGEPAGE_SIZES:
        raise ValidationError(field, 'must be one of %s, not %r' % (', '.join(HUGEPAGE_SIZES), value))
    if size is not None and size % HUGEPAGE_BYTES[value]:
        raise ValidationError(size_field, '%d bytes is not a whole number of %s huge pages (hugepages %s)' % (
            size, value, value))
    return value


def hugepage_memory_dir(params, hugepages, layout):
    """A server's or region's memory_dir: as given, else the fleet's hugetlbfs for ``hugepages``
    (on ``layout``'s host), else None (/dev/shm)."""
    memory_dir = check_path('memory_dir', params.get('memory_dir'), required=False)
    if memory_dir is None and hugepages:
        return (layout or Layout()).hugetlbfs(hugepages)
    return memory_dir


def check_int(field, value, minimum, maximum):
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValidationError(field, '%r is outside %d..%d' % (value, minimum, maximum))
    return value


def check_choice(field, value, spec, option):
    """One of the choices ``spec`` (an argument spec of _options.py) declares for ``option``."""
    choices = spec[option]['choices']
    if value not in choices:
        raise ValidationError(field, 'must be %s' % (' or '.join([', '.join(choices[:-1]), choices[-1]])))
    return value


def check_list(field, value):
    """A list (None is an empty one); anything else is refused."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(field, 'must be a list, not %s' % type(value).__name__)
    return value


def check_path(field, value, required=True):
    if value is None and not required:
        return None
    if not isinstance(value, str) or not os.path.isabs(value) or '\0' in value or '\n' in value:
        raise ValidationError(field, '%r is not an absolute path' % (value,))
    return os.path.normpath(value)


def _converted(kind, value):
    # Strings stay strings: a list or a number is refused, not written out as one on a command line.
    return check_type_str(value, allow_conversion=False) if kind == 'str' else DEFAULT_TYPE_VALIDATORS[kind](value)


def check_declared(field, value, declaration):
    """``value`` of an option with no rule of its own, by its declaration in _options.py: its
    default when unset, else its type (as Ansible converts it) and its choices."""
    if value is None:
        return declaration.get('default')
    kind = declaration.get('type', 'str')
    try:
        value = _converted(kind, value)
        if kind == 'list':
            value = [_converted(declaration.get('elements', 'str'), item) for item in value]
    except (TypeError, ValueError):
        raise ValidationError(field, '%r is not a %s' % (value, kind))
    if declaration.get('choices') and value not in declaration['choices']:
        raise ValidationError(field, 'must be one of %s' % ', '.join(declaration['choices']))
    return value


def check_mode(field, value):
    """A file mode: a quoted octal string, or a number that can only be the mode itself.

    YAML reads an unquoted 0600 as the number 384, which is that mode. But an unquoted 444 is the
    number 444 (0674), and YAML's reading of 0660 is 432, which reads as octal digits too: a number
    whose digits are all octal could mean either, so it is refused with the fix (quote it). A
    number above 0o777 (an unquoted 660) is refused as well.
    """
    if isinstance(value, bool):
        mode = None
    elif isinstance(value, int):
        mode = value
        if 8 <= value and re.match(r'^[0-7]+$', str(value)) and value <= 0o777:
            raise ValidationError(field, '%d is ambiguous: the mode %04o as YAML reads an unquoted number, or %s if '
                                         'its digits were meant; quote the mode (\'0%d\' or \'%04o\')' % (
                                             value, value, '0%d' % value, value, value))
    elif isinstance(value, str) and re.match(r'^0?[0-7]{3}$', value.strip()):
        mode = int(value.strip(), 8)
    else:
        mode = None
    if mode is None or not 0 <= mode <= 0o777:
        hint = ' (an unquoted %d is decimal; quote the mode: \'0%d\')' % (value, value) if (
            isinstance(value, int) and not isinstance(value, bool) and re.match(r'^[0-7]{3}$', str(value))) else ''
        raise ValidationError(field, '%r is not a mode between 0000 and 0777, such as \'0660\'%s' % (value, hint))
    return mode


def qemu_opt(value):
    """Escape a value inside a QEMU -opt list (commas are doubled)."""
    return str(value).replace(',', ',,')


# A machine type alias and the versioned types it stands for. A guest started with an alias runs
# the versioned type its QEMU resolved it to (pc is pc-i440fx-7.2 on QEMU 7.2, pc-i440fx-10.0 on
# 10.0), and a migration stream loads only into that same type: the resolved type travels.
MACHINE_ALIASES = {'pc': 'pc-i440fx-', 'q35': 'pc-q35-'}


def machine_name(machine):
    """The type in a -machine value, without its options (``q35`` of ``q35,smm=off``)."""
    return machine.split(',', 1)[0]


def machine_from_qom(value):
    """The versioned type of QOM's ``/machine`` ``type`` (``pc-i440fx-7.2-machine``), or None."""
    if not isinstance(value, str) or not value.endswith('-machine'):
        return None
    return value[:-len('-machine')]


def pinned_machine(machine, machine_type):
    """``machine`` with its type replaced by ``machine_type``, options kept."""
    if not machine_type:
        return machine
    rest = machine[len(machine_name(machine)):]
    return machine_type + rest


def same_machine(asked, recorded, resolved):
    """Is a guest that was asked for ``recorded`` and runs ``resolved`` (None: not known) already
    what ``asked`` asks? An alias and the type it resolved to are the same; an explicit versioned
    type is another only when it differs."""
    if asked == recorded:
        return True
    if not resolved:
        return False
    name, rest = machine_name(asked), asked[len(machine_name(asked)):]
    if rest != recorded[len(machine_name(recorded)):]:
        return False  # other options: another machine
    family = MACHINE_ALIASES.get(name)
    return name == resolved or (family is not None and resolved.startswith(family))


class ServerSpec:
    """A named ivshmem server: which implementation, which memory, which policy."""

    FIELDS = SERVER_FIELDS

    def __init__(self, params, layout=None):
        """``layout``: the host's (where memory on huge pages lives, when memory_dir is not given)."""
        self.name = check_name('name', params.get('name'))
        self.implementation = check_choice('implementation', params.get('implementation') or
                                           SERVER_DEFAULTS['implementation'], SERVER_ARGS, 'implementation')
        self.binary = check_path('binary', params.get('binary'), required=self.implementation == 'qemu')
        maximum = UPSTREAM_MAX_SIZE if self.implementation == 'qemu' else MAX_SHM_SIZE
        self.size = check_size('size', params.get('size', SERVER_DEFAULTS['size']), maximum=maximum)
        self.vectors = check_int('vectors', params.get('vectors', SERVER_DEFAULTS['vectors']), 1, MAX_VECTORS)
        self.shm_name = check_name('shm_name', params.get('shm_name') or 'ivshmem-fleet-' + self.name)
        self.hugepages = check_hugepages('hugepages', params.get('hugepages'), self.size)
        self.memory_dir = hugepage_memory_dir(params, self.hugepages, layout)
        pins = params.get('pins') or {}
        if not isinstance(pins, dict):
            raise ValidationError('pins', 'must be a mapping of guest name to ID')
        self.pins = {}
        for guest, peer_id in sorted(pins.items()):
            check_name('pins', guest)
            if isinstance(peer_id, str) and peer_id.strip().isdigit():
                peer_id = int(peer_id)
            if isinstance(peer_id, bool) or not isinstance(peer_id, int):
                raise ValidationError('pins.%s' % guest, '%r is not an ID' % (peer_id,))
            check_int('pins.%s' % guest, peer_id, 0, MAX_PEER_ID)
            if peer_id in self.pins.values():
                raise ValidationError('pins.%s' % guest, 'ID %d is pinned twice' % peer_id)
            self.pins[guest] = peer_id
        admit = check_list('admit', params.get('admit'))
        self.admit = sorted(set(check_name('admit[%d]' % i, guest) for i, guest in enumerate(admit)))
        self.admit_any = params.get('admit_any', SERVER_DEFAULTS['admit_any'])
        if not isinstance(self.admit_any, bool):
            raise ValidationError('admit_any', 'must be true or false')
        if self.admit_any and (self.pins or self.admit):
            raise ValidationError('admit_any', 'admits every account, which contradicts %s'
                                  % ('pins' if self.pins else 'admit'))
        accounts = params.get('accounts') or {}
        if not isinstance(accounts, dict):
            raise ValidationError('accounts', 'must be a mapping of guest name to the account it runs as')
        self.accounts = dict((check_name('accounts', guest), check_account('accounts.%s' % guest, user))
                             for guest, user in sorted(accounts.items()))
        self.max_clients = params.get('max_clients')
        if self.max_clients is not None:  # None: as many as the server's fd limit allows
            self.max_clients = check_int('max_clients', self.max_clients, 1, MAX_PEER_ID + 1)
        self.socket_mode = check_mode('socket_mode', params.get('socket_mode', SERVER_DEFAULTS['socket_mode']))
        self.memory_mode = check_mode('memory_mode', params.get('memory_mode', SERVER_DEFAULTS['memory_mode']))
        self.user, self.group = _user_and_group(params, server_account(self.name))
        self.hold = params.get('hold')
        if self.hold is not None:
            check_name('hold', self.hold)
        if self.implementation == 'qemu':
            for field in ('pins', 'admit', 'hold'):
                if getattr(self, field):
                    raise ValidationError(field, 'needs implementation builtin (upstream has no %s)' % field)
            self.admit_any = True  # upstream admits whoever can open its socket
        shared = shared_account(self.guest_accounts())
        if shared:
            other, guest, user = shared
            raise ValidationError('accounts.%s' % guest, 'guests %s and %s both run as %s: the server tells '
                                  'guests apart by their account, so each needs its own' % (other, guest, user))

    def guest_accounts(self):
        """{guest: the account it runs as} for every guest this server knows by name (pinned,
        admitted, or the master admission is held for): the server identifies them by that account."""
        names = set(self.pins) | set(self.admit) | (set([self.hold]) if self.hold else set())
        return dict((name, self.accounts.get(name) or guest_account(name)) for name in names)

    def to_dict(self):
        """The settings that define the running server (a change needs a restart)."""
        data = dict((field, getattr(self, field)) for field in self.FIELDS if field != 'hugepages')
        if self.admit_any and self.implementation == 'builtin':
            data['admit_any'] = True  # only when set: the records of servers started before stay equal
        if self.hugepages:
            data['hugepages'] = self.hugepages  # the same
        data['socket_mode'] = '%04o' % self.socket_mode
        data['memory_mode'] = '%04o' % self.memory_mode
        return data

    def memory_path(self):
        """The memory file on the host, or None where the host cannot see it."""
        if self.memory_dir:
            # Upstream creates an anonymous, unlinked file in the directory.
            return None if self.implementation == 'qemu' else Layout.server_memory(self.shm_name, self.memory_dir)
        return Layout.server_memory(self.shm_name)

    def argv(self, layout, python, program, foreground, uids=None):
        """The server's command line. ``program`` is the builtin zipapp (ignored for qemu);
        ``uids``: {guest: uid} of guest_accounts(), resolved on the host."""
        common = ['-S', layout.server_socket(self.name), '-M', self.shm_name,
                  '-l', str(self.size), '-n', str(self.vectors), '-p', layout.server_pidfile(self.name)]
        if self.memory_dir:
            common += ['-m', self.memory_dir]
        if foreground:
            common.insert(0, '-F')
        if self.implementation == 'qemu':
            return [self.binary] + common
        argv = [python, program] + common + [
            '--control', layout.server_control(self.name),
            '--socket-mode', '%04o' % self.socket_mode, '--memory-mode', '%04o' % self.memory_mode]
        if self.max_clients is not None:
            argv += ['--max-clients', str(self.max_clients)]
        for guest, uid in sorted((uids or {}).items()):
            argv += ['--account', '%s=%d' % (guest, uid)]
        if not self.admit_any:
            # Only the accounts it knows join: its group's (pins, admit), and each guest the guest
            # module starts against it, which root tells it of first (control request admit).
            argv += ['--admit-accounts-only']
        for guest, peer_id in sorted(self.pins.items()):
            argv += ['--pin', '%s=%d' % (guest, peer_id)]
        if self.hold:
            argv += ['--hold', self.hold]
        return argv


def region_group(name):
    """The group whose members read and write region ``name``, unless its ``group`` says otherwise."""
    return _account('ivm', name)


class RegionSpec:
    """A plain group's shared memory: one file that root makes and owns, mode ``mode`` for the
    group ``group``, whose members (the group's guests' accounts and named host accounts) are the
    only ones that open it. QEMU never makes it: a file QEMU makes is its first guest's, 0644, and
    every other guest's QEMU fails on it."""

    FIELDS = REGION_FIELDS

    def __init__(self, params, layout=None):
        """``layout``: the host's (where memory on huge pages lives, when memory_dir is not given)."""
        self.name = check_name('name', params.get('name'))
        self.size = check_size('size', params.get('size') or REGION_DEFAULTS['size'])
        self.shm_name = check_name('shm_name', params.get('shm_name') or 'ivshmem-fleet-' + self.name)
        self.hugepages = check_hugepages('hugepages', params.get('hugepages'), self.size)
        self.memory_dir = hugepage_memory_dir(params, self.hugepages, layout)
        self.group = check_account('group', params.get('group') or region_group(self.name))
        if self.group in PRIVILEGED_GROUPS or self.group == SERVICE_GROUP:
            raise ValidationError('group', '%s is not a group of this region alone: its members would open the memory '
                                           '(leave group unset: %s)' % (self.group, region_group(self.name)))
        mode = params.get('mode')
        self.mode = check_mode('mode', REGION_DEFAULTS['mode'] if mode is None else mode)
        if self.mode & 0o007 or self.mode & 0o060 != 0o060 or self.mode & 0o111:
            raise ValidationError('mode', '%04o: the group reads and writes it (QEMU opens it read-write), nobody '
                                          'else has access and nothing executes it, such as \'0660\'' % self.mode)
        self.members = []
        for index, member in enumerate(check_list('members', params.get('members'))):
            member = check_account('members[%d]' % index, member)
            if member in PRIVILEGED_USERS:
                raise ValidationError('members[%d]' % index, '%s reads any file already' % member)
            if member not in self.members:
                self.members.append(member)

    def memory_path(self):
        return Layout.server_memory(self.shm_name, self.memory_dir)

    def to_dict(self):
        data = dict((field, getattr(self, field)) for field in self.FIELDS if field != 'hugepages')
        data['mode'] = '%04o' % self.mode
        data['members'] = sorted(self.members)
        if self.hugepages:
            data['hugepages'] = self.hugepages  # only when set: the records of regions made before stay equal
        return data


class IvshmemDevice:
    """One ivshmem device of a guest."""

    def __init__(self, index, params, layout):
        field = 'ivshmem[%d]' % index
        if not isinstance(params, dict):
            raise ValidationError(field, 'must be a mapping')
        unknown = set(params) - set(IVSHMEM_ARGS)
        if unknown:
            raise ValidationError(field, 'unknown option(s) %s' % ', '.join(sorted(unknown)))
        self.id = 'ivshmem%d' % index
        self.index = index
        self.type = check_choice(field + '.type', params.get('type') or IVSHMEM_DEFAULTS['type'], IVSHMEM_ARGS, 'type')
        self.role = check_choice(field + '.role', params.get('role') or IVSHMEM_DEFAULTS['role'], IVSHMEM_ARGS, 'role')
        self.server = self.socket = self.memory_path = self.size = self.vectors = None
        if self.type == 'doorbell':
            if bool(params.get('server')) == bool(params.get('socket')):
                raise ValidationError(field, 'a doorbell device needs exactly one of server or socket')
            for key in ('memory_path', 'size'):
                if params.get(key) is not None:
                    raise ValidationError('%s.%s' % (field, key), 'only for type plain')
            if params.get('server'):
                self.server = check_name(field + '.server', params['server'])
                self.socket = layout.server_socket(self.server)
            else:
                self.socket = check_path(field + '.socket', params['socket'])
            vectors = params.get('vectors')
            self.vectors = check_int(field + '.vectors', IVSHMEM_DEFAULTS['vectors'] if vectors is None else vectors, 1,
                                     MAX_VECTORS)
        else:
            for key in ('server', 'socket', 'vectors'):
                if params.get(key) is not None:
                    raise ValidationError('%s.%s' % (field, key), 'only for type doorbell')
            self.memory_path = check_path(field + '.memory_path', params.get('memory_path'))
            self.size = check_size(field + '.size', params.get('size'))
        # Placed where PCI hotplug works, so the device can be unplugged and plugged back (a peer
        # moved live, see _hotplug.py). Off by default: it changes the guest's PCI topology.
        self.hotplug = params.get('hotplug', IVSHMEM_DEFAULTS['hotplug'])
        if not isinstance(self.hotplug, bool):
            raise ValidationError(field + '.hotplug', 'must be true or false')

    @property
    def backend_id(self):
        """The ID of what the device is plugged onto: its chardev to the server (doorbell) or its
        memory-backend-file (plain)."""
        return '%s-%s' % (self.id, 'chr' if self.type == 'doorbell' else 'mem')

    @property
    def memory_key(self):
        """What identifies the shared memory: one master per key."""
        return ('server', self.socket) if self.type == 'doorbell' else ('file', self.memory_path)

    def to_dict(self):
        data = dict((k, getattr(self, k)) for k in ('id', 'type', 'role', 'server', 'socket', 'memory_path', 'size', 'vectors'))
        if self.hotplug:
            data['hotplug'] = True  # only when set: the records of guests started before it stay equal
        return data

    @classmethod
    def from_record(cls, data, layout):
        """The device again from its ``to_dict()`` (a guest's record)."""
        keys = ('type', 'role', 'vectors', 'hotplug', 'memory_path', 'size')
        params = dict((k, data[k]) for k in keys if data.get(k) is not None)
        params.update({'server': data['server']} if data.get('server') else {'socket': data.get('socket')})
        return cls(int(str(data.get('id', 'ivshmem0'))[len('ivshmem'):] or 0), params, layout)

    def hotplug_placement(self, machine):
        """(arguments that stay when the device is unplugged, the device's bus properties).

        pc (i440fx): a fixed slot on the root bus, which has ACPI hotplug. q35: a root port of
        its own (its root bus has no hotplug). The same on both hosts of a move, so a guest
        started without the device loads the stream of one whose device was unplugged.
        """
        slot = HOTPLUG_FIRST_SLOT + self.index
        if 'q35' in machine:
            port = '%s-port' % self.id
            return (['-device', 'pcie-root-port,id=%s,chassis=%d,bus=pcie.0,addr=0x%x' % (port, slot, slot)],
                    {'bus': port})
        if machine.startswith('pc') or 'i440fx' in machine:
            return [], {'bus': 'pci.0', 'addr': '0x%x' % slot}
        raise ValidationError('ivshmem[%d].hotplug' % self.index,
                              'machine %s: devices are placed for hotplug on pc and q35 machines only' % machine)

    def qmp_plug(self, machine):
        """(the backend's arguments, device_add's) that plug this device back (hotplug only): a
        doorbell device's chardev-add (a connection to its server), a plain one's object-add (the
        memory-backend-file of its command line)."""
        master = 'on' if self.role == 'master' else 'off'
        device = dict(self.hotplug_placement(machine)[1], driver='ivshmem-' + self.type, id=self.id, master=master)
        if self.type == 'doorbell':
            backend = {'id': self.backend_id, 'backend': {'type': 'socket', 'data': {
                'addr': {'type': 'unix', 'data': {'path': self.socket}}, 'server': False}}}
            device.update(chardev=self.backend_id, vectors=self.vectors)
        else:
            backend = {'qom-type': 'memory-backend-file', 'id': self.backend_id, 'mem-path': self.memory_path,
                       'size': self.size, 'share': True}
            device.update(memdev=self.backend_id)
        return backend, device

    def argv(self, machine=GUEST_DEFAULTS['machine'], plugged=True):
        """The device's command line; ``plugged`` False keeps only its hotplug placement."""
        before, bus = self.hotplug_placement(machine) if self.hotplug else ([], {})
        if not plugged:
            return before
        master = 'on' if self.role == 'master' else 'off'
        placed = ''.join(',%s=%s' % item for item in sorted(bus.items()))
        if self.type == 'doorbell':
            return before + ['-chardev', 'socket,id=%s,path=%s' % (self.backend_id, qemu_opt(self.socket)),
                             '-device', 'ivshmem-doorbell,id=%s,chardev=%s,vectors=%d,master=%s%s' % (
                                 self.id, self.backend_id, self.vectors, master, placed)]
        backend = 'memory-backend-file,id=%s,mem-path=%s,size=%d,share=on' % (
            self.backend_id, qemu_opt(self.memory_path), self.size)
        return before + ['-object', backend,
                         '-device', 'ivshmem-plain,id=%s,memdev=%s,master=%s%s' % (self.id, self.backend_id, master, placed)]


class GuestSpec:
    """A QEMU guest: machine, boot, disks and its ivshmem devices."""

    FIELDS = GUEST_FIELDS

    def __init__(self, params, layout):
        self.name = check_name('name', params.get('name'))
        self.binary = check_path('binary', params.get('binary') or GUEST_DEFAULTS['binary'])
        self.memory = check_size('memory', params.get('memory') or GUEST_DEFAULTS['memory'], minimum=16 << 20,
                                 maximum=1 << 42, power_of_two=False) >> 20
        self.hugepages = check_hugepages('hugepages', params.get('hugepages'), self.memory << 20, 'memory')
        cpus = params.get('cpus')
        self.cpus = check_int('cpus', GUEST_DEFAULTS['cpus'] if cpus is None else cpus, 1, 256)
        self.machine = params.get('machine') or GUEST_DEFAULTS['machine']
        if not isinstance(self.machine, str) or not re.match(r'^[A-Za-z0-9_.=,-]+\Z', self.machine):
            raise ValidationError('machine', '%r is not a machine type' % (self.machine,))
        self.accel = check_choice('accel', params.get('accel') or GUEST_DEFAULTS['accel'], GUEST_ARGS, 'accel')
        self.disks = []
        for index, disk in enumerate(check_list('disks', params.get('disks'))):
            field = 'disks[%d]' % index
            if not isinstance(disk, dict):
                raise ValidationError(field, 'must be a mapping')
            fmt = check_choice(field + '.format', disk.get('format') or DISK_DEFAULTS['format'], DISK_ARGS, 'format')
            interface = check_choice(field + '.interface', disk.get('interface') or DISK_DEFAULTS['interface'],
                                     DISK_ARGS, 'interface')
            self.disks.append({'path': check_path(field + '.path', disk.get('path')), 'format': fmt,
                               'interface': interface, 'readonly': bool(disk.get('readonly', DISK_DEFAULTS['readonly']))})
        self.kernel = check_path('kernel', params.get('kernel'), required=False)
        self.initrd = check_path('initrd', params.get('initrd'), required=False)
        self.append = params.get('append')
        if (self.initrd or self.append) and not self.kernel:
            raise ValidationError('kernel', 'initrd and append need a kernel')
        self.extra_devices = [str(d) for d in check_list('extra_devices', params.get('extra_devices'))]
        self.extra_args = [str(a) for a in check_list('extra_args', params.get('extra_args'))]
        devices = check_list('ivshmem', params.get('ivshmem'))
        self.devices = [IvshmemDevice(i, d, layout) for i, d in enumerate(devices)]
        seen = {}
        for index, device in enumerate(self.devices):
            if device.memory_key in seen:
                raise ValidationError('ivshmem[%d]' % index, 'same shared memory as ivshmem[%d]' % seen[device.memory_key])
            seen[device.memory_key] = index
            if device.hotplug:
                device.hotplug_placement(self.machine)  # a machine without a placement fails here
        self.user, self.group = _user_and_group(params, guest_account(self.name))
        self.sandbox = bool(params.get('sandbox', GUEST_DEFAULTS['sandbox']))
        # The options with no rule of their own above: as declared (_options.GUEST_ARGS).
        for field in self.FIELDS:
            if not hasattr(self, field):
                setattr(self, field, check_declared(field, params.get(field), GUEST_ARGS[field]))

    @property
    def ivshmem(self):
        return [d.to_dict() for d in self.devices]

    @property
    def device_types(self):
        """The QEMU devices this guest needs (``ivshmem-doorbell``, ``ivshmem-plain``)."""
        return sorted(set('ivshmem-' + d.type for d in self.devices))

    @property
    def masters(self):
        return [d for d in self.devices if d.role == 'master']

    def to_dict(self):
        return dict((field, getattr(self, field)) for field in self.FIELDS)

    def differs_from(self, recorded, resolved=None):
        """Does the guest a record describes (its ``spec``; ``resolved``: the machine type it
        runs) differ from this one? A field the record lacks (an option added since it started)
        counts as its default; an alias and the type it resolved to are the same machine."""
        asked = self.to_dict()
        recorded = dict((field, recorded.get(field, GUEST_DEFAULTS.get(field))) for field in asked)
        if same_machine(asked['machine'], recorded['machine'] or GUEST_DEFAULTS['machine'], resolved):
            recorded['machine'] = asked['machine']
        return recorded != asked

    def argv(self, layout, accel, incoming, unplugged=(), machine=None):
        """QEMU's command line. ``accel`` is resolved (kvm or tcg); ``incoming`` adds -incoming defer -S;
        the devices whose IDs are in ``unplugged`` are left out (their hotplug placement stays);
        ``machine``: the machine to run (the versioned type this guest resolved before), else its own."""
        accel_opt = 'kvm' if accel == 'kvm' else 'tcg,tb-size=%d' % TCG_TB_SIZE_MIB
        machine = machine or self.machine
        ram = []
        if self.hugepages:
            # RAM from the host's huge page pool, all of it taken at start (a short pool fails the
            # start, not the guest later). Its id is the RAM block's name, pc.ram as without it, so
            # a guest moves between hosts (and QEMU versions) with and without huge pages.
            ram = ['-object', 'memory-backend-memfd,id=%s,size=%dM,hugetlb=on,hugetlbsize=%d,prealloc=on' % (
                RAM_BACKEND, self.memory, HUGEPAGE_BYTES[self.hugepages])]
        elif any(device.type == 'plain' for device in self.devices):
            # The RAM's own backend, made before a plain device's: QEMU 10.0 under TCG aborts a
            # migration whose first RAM block is another backend (tlb_reset_dirty_range_all, "Bad
            # ram offset 0"), which a plain device's memory-backend-file otherwise is. Same name,
            # pc.ram, so it moves to and from guests started without it.
            ram = ['-object', 'memory-backend-ram,id=%s,size=%dM' % (RAM_BACKEND, self.memory)]
        if ram:
            machine += ',memory-backend=%s' % RAM_BACKEND
        argv = [self.binary, '-name', self.name, '-machine', machine, '-accel', accel_opt,
                '-m', str(self.memory), '-smp', str(self.cpus)] + ram
        if self.cpu:
            argv += ['-cpu', self.cpu]
        argv += ['-nodefaults', '-no-user-config', '-display', 'none',
                 '-qmp', 'unix:%s,server=on,wait=off' % qemu_opt(layout.guest_qmp(self.name)),
                 '-serial', 'file:%s' % layout.guest_console(self.name)]
        if self.sandbox:
            argv += ['-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny']
        for index, disk in enumerate(self.disks):
            argv += ['-drive', 'file=%s,format=%s,if=%s,index=%d%s' % (
                qemu_opt(disk['path']), disk['format'], disk['interface'], index,
                ',readonly=on' if disk['readonly'] else '')]
        if self.kernel:
            argv += ['-kernel', self.kernel]
        if self.initrd:
            argv += ['-initrd', self.initrd]
        if self.append:
            argv += ['-append', self.append]
        for device in self.devices:
            argv += device.argv(self.machine, plugged=device.id not in unplugged)
        for device in self.extra_devices:
            argv += ['-device', device]
        argv += self.extra_args
        if incoming:
            argv += ['-incoming', 'defer', '-S']
        return argv
