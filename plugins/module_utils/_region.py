# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A plain group's shared memory on this host (ivshmem.fleet.region): a file root makes and owns.

Its guests' QEMUs (ivshmem-plain, ``memory-backend-file,share=on``) and named host accounts open
it through its group (``ivm-NAME``), of which they are the only members; the mode gives that group
read and write and nobody else anything. QEMU opens an existing file read-write and makes one only
when there is none (0644, its first guest's, which every other guest then fails to open): so the
region is made before its guests start, and a guest's plain device with no file is refused.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import os
import pwd
import stat

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host, _hugepages, _rules
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import RegionSpec, region_group
from ansible_collections.ivshmem.fleet.plugins.module_utils._state_machine import ServiceAdapter


class RegionError(FleetError):
    """The region's file is not what root made (another's, a link, another size)."""


def region_status(layout, name):
    """The region as it is now: None if root never made it here; else its record (``spec``) and
    what its file shows (``state`` present or missing, ``group``, ``mode``, ``size``, ``members``)."""
    record = _host.read_json(layout.region_record(name))
    if record is None:
        return None
    path = RegionSpec(record, layout).memory_path()
    status = {'name': name, 'spec': record, 'path': path, 'memory': None, 'state': 'missing', 'group': None, 'mode': None,
              'size': None, 'members': None}
    try:
        status['members'] = sorted(grp.getgrnam(record['group']).gr_mem)
    except KeyError:
        pass
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return status
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = info.st_gid
    status.update(state='present', memory=path, group=group, mode='%04o' % stat.S_IMODE(info.st_mode), size=info.st_size,
                  owner_uid=info.st_uid, squatted=_rules.squatted(info, 0))
    return status


def steps_to_present(spec, status):
    """What makes the region as ``spec`` asks, from ``status``: steps in order ('group', 'members',
    'create', 'settle': the file's group and mode set again, 'record'). A file that root did not
    make, or of another size, is refused: it may be another's, or hold the group's memory."""
    desired = spec.to_dict()
    # Root makes, sets and removes the file by name there: nothing another account can redirect.
    _host.check_trusted_path('memory_dir', os.path.dirname(spec.memory_path()))
    steps = []
    try:
        members = sorted(grp.getgrnam(spec.group).gr_mem)
    except KeyError:
        steps.append('group')
        members = []
    if members != sorted(spec.members):
        steps.append('members')
    file_status = status or _file_status(spec)
    if file_status['state'] != 'present':
        steps.append('create')
    else:
        if file_status['squatted']:
            raise RegionError('%s is not a plain file of root with one link (uid %s): another account made it first; '
                              'refusing it' % (spec.memory_path(), file_status['owner_uid']))
        if file_status['size'] != spec.size:
            raise RegionError('%s holds %d bytes, not %d: a region keeps its size (state absent first, which drops '
                              'its memory)' % (spec.memory_path(), file_status['size'], spec.size))
        if (file_status['group'], file_status['mode']) != (spec.group, desired['mode']):
            steps.append('settle')
    if status is None or status['spec'] != desired:
        steps.append('record')
    return steps


def _file_status(spec):
    """region_status's view of a file for which root has no record (a region not made here yet)."""
    try:
        info = os.lstat(spec.memory_path())
    except FileNotFoundError:
        return {'state': 'missing'}
    return {'state': 'present', 'squatted': True, 'owner_uid': info.st_uid}  # not root's to take


class Region:
    """One region of this host and the work on it: make it as asked, make it afresh, remove it.
    Raises FleetErrors and reports nothing: RegionManager is the region module's adapter over it;
    a move (_move.py) calls it directly."""

    def __init__(self, layout, spec):
        self.layout = layout
        self.spec = spec
        self.path = spec.memory_path()

    @classmethod
    def from_params(cls, params, layout):
        return cls(layout, RegionSpec(params, layout))

    def status(self):
        return region_status(self.layout, self.spec.name)

    def ensure(self):
        """As asked: its group with exactly its members, its file root's with that group and mode."""
        for step in steps_to_present(self.spec, self.status()):
            self.do(step)

    def do(self, step):
        spec = self.spec
        if step == 'group':
            _host.ensure_group(spec.group, False)
        elif step == 'members':
            # A member without an account gets one of its own (never the service group, which
            # reads the migration credentials); a guest's QEMU runs in the service group anyway.
            _host.ensure_accounts([(member, member) for member in spec.members if not _account_known(member)])
            _host.set_group_members(spec.group, spec.members)
        elif step == 'create':
            if spec.hugepages:
                _hugepages.prepare_memory_dir(self.layout, spec.memory_dir, spec.hugepages)
            elif spec.memory_dir:
                _host.ensure_dir(spec.memory_dir, 0o755)  # an existing one (/dev/shm) keeps its mode
            _host.make_shared_file(self.path, spec.size, grp.getgrnam(spec.group).gr_gid, spec.mode)
        elif step == 'settle':
            _host.set_shared_file(self.path, grp.getgrnam(spec.group).gr_gid, spec.mode)
        elif step == 'record':
            _host.ensure_dir(os.path.dirname(os.path.dirname(self.layout.region_record(spec.name))), 0o755)
            _host.ensure_dir(os.path.dirname(self.layout.region_record(spec.name)), 0o700)
            _host.write_json(self.layout.region_record(spec.name), spec.to_dict())

    def renew(self):
        """Made afresh, all zeros (a move's destination: the master's stream fills it)."""
        self.remove(keep_group=True)
        self.ensure()

    def remove(self, keep_group=False):
        """The file (root's only: the record is never trusted for another's), the record, and the
        group when it is the region's own."""
        status = self.status()
        spec = RegionSpec(status['spec'], self.layout) if status is not None else self.spec
        try:
            _host.remove_own_file(spec.memory_path(), 0)
        except _host.HostError as exc:
            raise RegionError(str(exc))
        if status is not None:
            os.unlink(self.layout.region_record(spec.name))
            os.rmdir(os.path.dirname(self.layout.region_record(spec.name)))
        if not keep_group and spec.group == region_group(spec.name):
            try:
                grp.getgrnam(spec.group)
            except KeyError:
                return
            _host.run_program(['groupdel', spec.group], _host.ACCOUNT_TIMEOUT, user=None)


def _account_known(user):
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


class RegionManager(ServiceAdapter):
    """ivshmem.fleet.region: one method per state, each deciding from the region's status what
    changes (before, after, changed, check mode) and leaving the work to Region."""

    def __init__(self, params, layout, check_mode):
        self.region = Region.from_params(params, layout)
        super(RegionManager, self).__init__(self.region, self.region.status(), check_mode)

    @staticmethod
    def view(status):
        if status is None:
            return {'state': 'absent'}
        return {'state': status['state'], 'spec': status['spec'], 'group': status['group'], 'mode': status['mode'],
                'members': status['members']}

    def state_present(self):
        steps = steps_to_present(self.spec, self.current)
        desired = self.spec.to_dict()
        self.after = {'state': 'present', 'spec': desired, 'group': self.spec.group, 'mode': desired['mode'],
                      'members': sorted(self.spec.members)}
        for step in steps:
            if self.change(step):
                self.region.do(step)
        self._report()

    def state_absent(self):
        if self.current is not None:  # only what root made and recorded: a file of another is not ours
            self.after = {'state': 'absent'}
            if self.change('remove'):
                self.region.remove()
        self.result['region'] = {'name': self.spec.name, 'state': 'absent'}

    def _report(self):
        if self.check_mode:
            self.result['region'] = dict(self.after, name=self.spec.name, path=self.region.path)
        else:
            self.result['region'] = self.region.status()
