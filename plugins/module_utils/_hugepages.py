# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A host's huge pages: the pools the kernel keeps, and the hugetlbfs where the fleet's memory lives.

Shared memory on huge pages (a server's or a region's ``hugepages``) is a file on a hugetlbfs of
the fleet's own, ``<runtime_dir>/hugepages-2M``, mounted here with the page size, root's, group
the service group and mode 1770: servers (their accounts are in that group) make their memory
files there, none can remove another's, and nobody outside the fleet enters. A guest's RAM on
huge pages takes them from the same pool through memfd (_model.GuestSpec.argv), so it needs no
directory at all. Pages are taken when memory is made, never on demand later (QEMU's prealloc,
the server's posix_fallocate): a short pool is an error at start, never a SIGBUS in a guest.

The pool only grows here: lowering ``nr_hugepages`` below the pages in use makes the kernel turn
them into surplus pages instead of refusing, which a fleet never wants. Standard library only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import os

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError, ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import HUGEPAGE_BYTES, check_int
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import SERVICE_GROUP
from ansible_collections.ivshmem.fleet.plugins.module_utils._sizes import parse_size

SYSFS = '/sys/kernel/mm/hugepages'
MOUNTINFO = '/proc/self/mountinfo'
MOUNT_TIMEOUT = 30
MIB = 1 << 20


class HugepageError(FleetError):
    """The kernel has no such page size, did not give the pages asked, or a memory_dir is no hugetlbfs."""


def label(page_bytes):
    """``2M`` of 2 MiB pages, ``1G`` of 1 GiB pages (the names the options take)."""
    for name, size in HUGEPAGE_BYTES.items():
        if size == page_bytes:
            return name
    return '%dK' % (page_bytes >> 10)


def _pool_dir(page_size, sysfs=SYSFS):
    return os.path.join(sysfs, 'hugepages-%dkB' % (HUGEPAGE_BYTES[page_size] >> 10))


def _read_int(path):
    with open(path) as handle:
        return int(handle.read().strip())


def pools(sysfs=SYSFS):
    """{page size: {page_size (bytes), total, free, reserved, surplus, available}} of every size the
    kernel has (pages; ``available`` = free less reserved: what new memory can still take)."""
    found = {}
    try:
        entries = sorted(os.listdir(sysfs))
    except OSError:
        return found
    for entry in entries:
        if not (entry.startswith('hugepages-') and entry.endswith('kB') and entry[10:-2].isdigit()):
            continue
        path = os.path.join(sysfs, entry)
        try:
            values = dict((key, _read_int(os.path.join(path, name))) for key, name in (
                ('total', 'nr_hugepages'), ('free', 'free_hugepages'), ('reserved', 'resv_hugepages'),
                ('surplus', 'surplus_hugepages')))
        except (OSError, ValueError):
            continue
        page_bytes = int(entry[10:-2]) << 10
        values.update(page_size=page_bytes, available=max(values['free'] - values['reserved'], 0))
        found[label(page_bytes)] = values
    return found


def mount_of(path, mountinfo=MOUNTINFO):
    """(file system type, its super options) of the mount whose mount point is ``path``, or None."""
    path = os.path.normpath(path)
    found = None
    try:
        with open(mountinfo) as handle:
            for line in handle:
                fields = line.split()
                if ' - ' not in line or len(fields) < 5:
                    continue
                point = fields[4].replace('\\040', ' ').replace('\\011', '\t').replace('\\012', '\n').replace('\\134', '\\')
                if point == path:
                    after = line.split(' - ', 1)[1].split()
                    found = (after[0], after[2] if len(after) > 2 else '')  # the last mount there wins
    except (IOError, OSError):
        return None
    return found


def _page_bytes_of(options):
    """The page size in bytes a hugetlbfs's mount options say (``pagesize=2M``, ``2048k``), or None."""
    for option in options.split(','):
        if option.startswith('pagesize='):
            try:
                return parse_size(option[len('pagesize='):])
            except ValueError:
                return None
    return None


def check_mount(field, path, page_size, mountinfo=MOUNTINFO):
    """``path`` must be a hugetlbfs of ``page_size`` pages (a memory_dir for memory on them)."""
    mount = mount_of(path, mountinfo)
    if mount is None or mount[0] != 'hugetlbfs':
        raise HugepageError('%s: %s is not a hugetlbfs mount point (%s), where memory on %s huge pages must live '
                            '(leave memory_dir unset: the fleet mounts its own)' % (
                                field, path, 'a %s' % mount[0] if mount else 'nothing is mounted there', page_size))
    page_bytes = _page_bytes_of(mount[1])
    if page_bytes != HUGEPAGE_BYTES[page_size]:
        raise HugepageError('%s: %s is a hugetlbfs of %s pages, not %s' % (
            field, path, label(page_bytes) if page_bytes else 'unknown', page_size))


def prepare_memory_dir(layout, memory_dir, page_size, mountinfo=MOUNTINFO):
    """Make ``memory_dir`` ready for memory on ``page_size`` pages: the fleet's own hugetlbfs is
    mounted when it is not yet (after a reboot, say); one the user gave must be mounted already."""
    if memory_dir == layout.hugetlbfs(page_size) and (mount_of(memory_dir, mountinfo) or ('',))[0] != 'hugetlbfs':
        if not os.path.isdir(_pool_dir(page_size)):
            raise HugepageError('this kernel has no %s huge pages (no %s)' % (page_size, _pool_dir(page_size)))
        _host.ensure_group(SERVICE_GROUP, False)
        _host.ensure_dir(layout.runtime_dir, 0o755)
        _host.check_own_directory('runtime_dir', layout.runtime_dir)  # nothing planted on the way to the mount
        _host.ensure_dir(memory_dir, 0o755)
        rc, _out, err = _host.run_program(
            ['mount', '-t', 'hugetlbfs', '-o', 'pagesize=%s,mode=1770,uid=0,gid=%d,nosuid,nodev,noexec' % (
                page_size, grp.getgrnam(SERVICE_GROUP).gr_gid), 'ivshmem-fleet', memory_dir], MOUNT_TIMEOUT, user=None)
        if rc != 0:
            raise HugepageError('cannot mount a hugetlbfs of %s pages on %s: %s' % (page_size, memory_dir, err.strip()))
    check_mount('memory_dir', memory_dir, page_size, mountinfo)


def check_pool_request(field, request):
    """{page size: pages} as ivshmem.fleet.host's ``hugepages`` takes it."""
    if not isinstance(request, dict):
        raise ValidationError(field, 'must be a mapping of page size (%s) to pages' % ', '.join(HUGEPAGE_BYTES))
    checked = {}
    for page_size, pages in sorted(request.items()):
        if page_size not in HUGEPAGE_BYTES:
            raise ValidationError('%s.%s' % (field, page_size), 'not a page size (%s)' % ', '.join(HUGEPAGE_BYTES))
        if isinstance(pages, str) and pages.strip().isdigit():
            pages = int(pages)
        checked[page_size] = check_int('%s.%s' % (field, page_size), pages, 0, 1 << 30)
    return checked


def pool_request(hugepages, spare):
    """{page size: pages} the pools must hold: ``hugepages`` and ``spare`` (ivshmem.fleet.host's
    options of those names) summed per page size."""
    request = check_pool_request('hugepages', hugepages or {})
    for page_size, pages in check_pool_request('hugepages_spare', spare or {}).items():
        request[page_size] = request.get(page_size, 0) + pages
    return request


def pool_changes(request, sysfs=SYSFS):
    """{page size: (pages now, pages asked)} of the pools ``request`` would grow."""
    now = pools(sysfs)
    changes = {}
    for page_size, pages in sorted(request.items()):
        if page_size not in now:
            if pages:
                raise HugepageError('hugepages.%s: this kernel has no %s huge pages (no %s)' % (
                    page_size, page_size, _pool_dir(page_size, sysfs)))
            continue
        if now[page_size]['total'] < pages:
            changes[page_size] = (now[page_size]['total'], pages)
    return changes


def grow_pool(page_size, pages, sysfs=SYSFS):
    """The pool of ``page_size`` to ``pages``; an error says how many the kernel gave (a host whose
    memory is fragmented may give fewer: 1 GiB pages, mostly, are reserved at boot)."""
    path = os.path.join(_pool_dir(page_size, sysfs), 'nr_hugepages')
    with open(path, 'w') as handle:
        handle.write('%d\n' % pages)
    given = _read_int(path)
    if given < pages:
        raise HugepageError('hugepages.%s: asked %d %s huge pages, the kernel gave %d: %d MiB short (free memory is '
                            'fragmented or short; reserve them at boot: hugepages= on the kernel command line)' % (
                                page_size, pages, page_size, given, (pages - given) * HUGEPAGE_BYTES[page_size] // MIB))
    return given
