# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Every entity's options and their defaults, declared once.

Each declaration is an argument spec, as AnsibleModule takes it. The modules and action plugins
build their ``argument_spec`` from these; the model (``_model.py``), the groups (``_groups.py``)
and the move take their defaults from them (``DEFAULTS``) and their lists of fields from them.
The documentation cannot be generated (ansible-doc reads it as text): each module's
DOCUMENTATION, the shared fragments in ``plugins/doc_fragments/`` and the roles'
``meta/argument_specs.yml`` are checked against these declarations by
``tests/unit/plugins/test_options.py``, which names the option that differs.

To add a guest option: declare it in ``GUEST_ARGS`` (with its default), document it in
``plugins/modules/guest.py``, and use it in ``GuestSpec`` (``_model.py``). It is recorded, shown in
the diff and taken in a group's guests from here.

Standard library only, and no import at all (modules import it on the managed host, and every
module_utils of the collection may import it; nothing here costs time at import).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DEFAULT_RUNTIME_DIR = '/run/ivshmem-fleet'
# The QEMU a guest runs unless it names another (Debian's qemu-system-x86 package).
DEFAULT_QEMU = '/usr/bin/qemu-system-x86_64'
# A server's interrupt vectors, and a doorbell device's (they must be the server's).
DEFAULT_VECTORS = 1
# The group every server and guest runs in unless told otherwise (see _model.py).
SERVICE_GROUP = 'ivshmem'
# A host's migration credentials, and the controller's CA.
DEFAULT_TLS_DIR = '/etc/ivshmem-fleet/tls'
DEFAULT_PKI_DIR = '~/.ivshmem-fleet/pki'
# The shared-memory checksums _checksum.py computes, and the default (why crc32: see there).
CHECKSUMS = ('crc32', 'sha1', 'sha256', 'blake2b')
DEFAULT_CHECKSUM = 'crc32'
# Huge page sizes memory may be backed by (x86-64's: 2 MiB, and 1 GiB where the CPU has them).
HUGEPAGE_SIZES = ('2M', '1G')


def defaults(spec):
    """{option: default} of the options of ``spec`` that have one."""
    return dict((name, option['default']) for name, option in spec.items() if 'default' in option)


def pick(spec, *names, **changes):
    """A copy of the options ``names`` of ``spec`` (in that order); ``without_default=True``
    drops their defaults (a caller that always passes them)."""
    without_default = changes.pop('without_default', False)
    if changes:
        raise TypeError('unknown argument(s) %s' % ', '.join(sorted(changes)))
    picked = dict((name, dict(spec[name])) for name in names)
    if without_default:
        for option in picked.values():
            option.pop('default', None)
    return picked


# Every module takes these (documented once: plugins/doc_fragments/_common.py).
COMMON_ARGS = dict(
    runtime_dir=dict(type='path', default=DEFAULT_RUNTIME_DIR),
)

# ---- guest: ivshmem.fleet.guest, each item of ivshmem.fleet.host's guests, a group's guests

# A disk of a guest (guest option disks).
DISK_ARGS = dict(
    path=dict(type='path', required=True),
    format=dict(type='str', default='qcow2', choices=['qcow2', 'raw']),
    interface=dict(type='str', default='virtio', choices=['virtio', 'ide', 'scsi']),
    readonly=dict(type='bool', default=False),
)

# An ivshmem device of a guest (guest option ivshmem). vectors has no default here: it is for
# doorbell devices only (a plain one that names it is refused); a doorbell device without it has
# DEFAULT_VECTORS.
IVSHMEM_ARGS = dict(
    type=dict(type='str', default='doorbell', choices=['doorbell', 'plain']),
    server=dict(type='str'),
    socket=dict(type='path'),
    memory_path=dict(type='path'),
    size=dict(type='str'),
    role=dict(type='str', default='peer', choices=['master', 'peer']),
    vectors=dict(type='int'),
    hotplug=dict(type='bool', default=False),
)

# The options of one guest, as ivshmem.fleet.guest and ivshmem.fleet.host take them.
GUEST_ARGS = dict(
    name=dict(type='str', required=True),
    state=dict(type='str', default='running', choices=['running', 'paused', 'incoming', 'stopped', 'absent']),
    binary=dict(type='path', default=DEFAULT_QEMU),
    memory=dict(type='str', default='128M'),
    cpus=dict(type='int', default=1),
    cpu=dict(type='str'),
    hugepages=dict(type='str', choices=list(HUGEPAGE_SIZES)),
    machine=dict(type='str', default='pc'),
    accel=dict(type='str', default='auto', choices=['auto', 'kvm', 'tcg']),
    disks=dict(type='list', elements='dict', options=DISK_ARGS),
    kernel=dict(type='path'),
    initrd=dict(type='path'),
    append=dict(type='str'),
    extra_devices=dict(type='list', elements='str'),
    extra_args=dict(type='list', elements='str'),
    ivshmem=dict(type='list', elements='dict', options=IVSHMEM_ARGS),
    user=dict(type='str'),
    group=dict(type='str'),
    sandbox=dict(type='bool', default=True),
    incoming_uri=dict(type='str'),
    restart_on_drift=dict(type='bool', default=False),
    timeout=dict(type='int', default=60),
)
# What the task does with the guest, not what the guest is.
GUEST_TASK_OPTIONS = ('state', 'incoming_uri', 'restart_on_drift', 'timeout')
# What defines the guest (GuestSpec.FIELDS: recorded, compared, a change needs a restart).
GUEST_FIELDS = tuple(name for name in GUEST_ARGS if name not in GUEST_TASK_OPTIONS)
# What a group's master and peers take (the group builds their ivshmem device).
GROUP_GUEST_OPTIONS = tuple(name for name in GUEST_FIELDS if name != 'ivshmem')
GUEST_DEFAULTS = defaults(GUEST_ARGS)
DISK_DEFAULTS = defaults(DISK_ARGS)
IVSHMEM_DEFAULTS = dict(defaults(IVSHMEM_ARGS), vectors=DEFAULT_VECTORS)

# ---- server: ivshmem.fleet.server, each item of ivshmem.fleet.host's servers, a group's server

# The options of one server, as ivshmem.fleet.server and ivshmem.fleet.host take them.
SERVER_ARGS = dict(
    name=dict(type='str', required=True),
    state=dict(type='str', default='started', choices=['started', 'stopped', 'restarted', 'absent']),
    implementation=dict(type='str', default='builtin', choices=['builtin', 'qemu']),
    binary=dict(type='path'),
    size=dict(type='str', default='4M'),
    vectors=dict(type='int', default=DEFAULT_VECTORS),
    shm_name=dict(type='str'),
    memory_dir=dict(type='path'),
    hugepages=dict(type='str', choices=list(HUGEPAGE_SIZES)),
    pins=dict(type='dict'),
    admit=dict(type='list', elements='str'),
    admit_any=dict(type='bool', default=False),
    accounts=dict(type='dict'),
    admission=dict(type='str', default='open', choices=['open', 'held']),
    hold_for=dict(type='str'),
    max_clients=dict(type='int'),
    socket_mode=dict(type='raw', default='0660'),
    memory_mode=dict(type='raw', default='0600'),
    user=dict(type='str'),
    group=dict(type='str'),
    supervisor=dict(type='str', default='auto', choices=['auto', 'systemd', 'daemon']),
    program_dir=dict(type='path', default='/usr/local/lib/ivshmem-fleet'),
    restart_on_drift=dict(type='bool', default=False),
    timeout=dict(type='int', default=30),
)
# What the task does with the server (admission and hold_for become the spec's hold).
SERVER_TASK_OPTIONS = ('state', 'admission', 'hold_for', 'supervisor', 'program_dir', 'restart_on_drift', 'timeout')
# What defines the server (ServerSpec.FIELDS). admit_any and hugepages are recorded only when set,
# so the records of servers started before them stay equal.
SERVER_FIELDS = tuple(name for name in SERVER_ARGS if name not in SERVER_TASK_OPTIONS + ('admit_any',))
# What a group's server takes: the group sets the others from its own keys and its guests.
GROUP_SERVER_OPTIONS = tuple(name for name in SERVER_FIELDS
                             if name not in ('name', 'size', 'vectors', 'hugepages', 'pins', 'admit', 'accounts'))
SERVER_DEFAULTS = defaults(SERVER_ARGS)

# ---- region: ivshmem.fleet.region, each item of ivshmem.fleet.host's regions, a plain group's memory

# A plain group's shared memory: a file root makes and owns, which the accounts in ``members``
# (its group's, ivm-NAME by default) read and write; nobody else opens it.
REGION_ARGS = dict(
    name=dict(type='str', required=True),
    state=dict(type='str', default='present', choices=['present', 'absent']),
    size=dict(type='str', default='4M'),
    shm_name=dict(type='str'),
    memory_dir=dict(type='path'),
    hugepages=dict(type='str', choices=list(HUGEPAGE_SIZES)),
    group=dict(type='str'),
    mode=dict(type='raw', default='0660'),
    members=dict(type='list', elements='str', default=[]),
)
REGION_TASK_OPTIONS = ('state',)
REGION_FIELDS = tuple(name for name in REGION_ARGS if name not in REGION_TASK_OPTIONS)
REGION_DEFAULTS = defaults(REGION_ARGS)
# What a plain group's region takes from the group's region key (the group sets the others).
GROUP_REGION_OPTIONS = tuple(name for name in REGION_FIELDS if name not in ('name', 'size', 'hugepages', 'members'))

# ---- ivshmem.fleet.host

# What differs on one host from the inventory's groups (the hosts' variables
# ivshmem_fleet_server_overrides and ivshmem_fleet_guest_overrides): ivshmem.fleet.host and
# ivshmem.fleet.move_host take them, _groups.overridden applies them (doc fragment _host_overrides).
OVERRIDE_ARGS = dict(
    server_overrides=dict(type='dict', default={}),
    guest_overrides=dict(type='dict', default={}),
)

HOST_ARGS = dict(
    servers=dict(type='list', elements='dict', default=[]),
    regions=dict(type='list', elements='dict', default=[]),
    guests=dict(type='list', elements='dict', default=[]),
    hugepages=dict(type='dict', default={}),
    hugepages_spare=dict(type='dict', default={}),
    user=dict(type='str'),
    group=dict(type='str'),
    **OVERRIDE_ARGS
)

# ---- ivshmem.fleet.plan (its module's documentation and its action plugin)

# ivshmem.fleet.plan's options beside runtime_dir (the module's and its action plugin's).
PLAN_ARGS = dict(
    groups=dict(type='list', elements='dict', required=True),
    hosts=dict(type='list', elements='str', required=True),
    facts=dict(type='dict'),
    rollout=dict(type='dict', options=dict(
        batch=dict(type='list', elements='str', default=[]),
        skip=dict(type='list', elements='str', default=[]),
        destinations=dict(type='raw', default='any'),
        reserve=dict(type='raw', default='256M'),
        guest_overhead=dict(type='raw', default='64M'),
        capacity=dict(type='dict', default={}),
    )),
    group=dict(type='str'),
    evacuate=dict(type='str'),
    destination=dict(type='str'),
)


# ---- migration: ivshmem.fleet.migrate (one host) and ivshmem.fleet.group_migrate (between hosts)
# share these (documented once: plugins/doc_fragments/_migration_options.py).

MIGRATION_ARGS = dict(
    max_bandwidth=dict(type='int', default=10 << 30),
    downtime_limit=dict(type='int', default=300),
    checksum=dict(type='str', default=DEFAULT_CHECKSUM, choices=list(CHECKSUMS)),
)
MIGRATION_DEFAULTS = defaults(MIGRATION_ARGS)

MIGRATE_ARGS = dict(
    phase=dict(type='str', default='full', choices=['full', 'send', 'receive', 'abort']),
    guest=dict(type='str'),
    destination=dict(type='str'),
    uri=dict(type='str'),
    expected_checksums=dict(type='list', elements='str'),
    max_bandwidth=MIGRATION_ARGS['max_bandwidth'],
    downtime_limit=MIGRATION_ARGS['downtime_limit'],
    timeout=dict(type='int', default=300),
    verify=dict(type='bool', default=True),
    checksum=MIGRATION_ARGS['checksum'],
    stop_source=dict(type='bool', default=True),
)
MIGRATE_DEFAULTS = defaults(MIGRATE_ARGS)

# ivshmem.fleet.group_migrate (its action plugin's options); its role passes every one on.
MOVE_ARGS = dict(
    group=dict(type='dict', required=True),
    destination=dict(type='str', required=True),
    source=dict(type='str'),
    max_bandwidth=MIGRATION_ARGS['max_bandwidth'],
    downtime_limit=MIGRATION_ARGS['downtime_limit'],
    timeout=dict(type='int'),
    checksum_timeout=dict(type='int'),
    checksum=MIGRATION_ARGS['checksum'],
    start_timeout=dict(type='int', default=120),
    attempts=dict(type='int', default=3),
    backoff=dict(type='int', default=5),
    lease=dict(type='int', default=120),
    progress_interval=dict(type='float', default=5.0),
    lock_wait=dict(type='int', default=900),
    verify_channel=dict(type='bool', default=True),
    tls=dict(type='bool', default=True),
)
MOVE_DEFAULTS = defaults(MOVE_ARGS)
# What the engine passes on to ivshmem.fleet.move_host as they are (always set there: no defaults).
MOVE_HOST_OPTIONS = ('max_bandwidth', 'downtime_limit', 'timeout', 'start_timeout', 'lease', 'checksum',
                     'checksum_timeout')

# ---- ivshmem.fleet.migration_credentials

# ivshmem.fleet.migration_credentials' options (its action plugin adds ``files`` for the module).
CREDENTIALS_ARGS = dict(
    state=dict(type='str', default='present', choices=['present', 'absent']),
    dest=dict(type='path', default=DEFAULT_TLS_DIR),
    group=dict(type='str', default=SERVICE_GROUP),
    pki_dir=dict(type='path', default=DEFAULT_PKI_DIR),
    names=dict(type='list', elements='str', default=[]),
    addresses=dict(type='list', elements='str'),
    valid_days=dict(type='int', default=825),
    replace_ca=dict(type='bool', default=False),
)
