"""Plain groups (ivshmem-plain): one region shared by a master and peers that each run under their
own account, and by named host accounts; nobody else opens it. Real QEMU, real files, real accounts.

Before regions, the first guest's QEMU made the file (its own, mode 0644) and every other guest
failed on it ("can't open backing store ... Permission denied").
"""
import grp
import hashlib
import os
import stat
import subprocess
import uuid

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError, ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import GuestManager
from ansible_collections.ivshmem.fleet.plugins.module_utils._region import RegionManager

from conftest import lab_root
from move_lab import TwoHosts

READER = 'ivt-reader'  # a host account that reads the region (a Looking Glass client, say)


@pytest.fixture
def reader():
    _host.ensure_account(READER, READER, False)
    yield READER
    subprocess.run(['userdel', READER], check=False)
    subprocess.run(['groupdel', READER], check=False)


def read_as(user, path, count=4 << 20):
    """(exit status, sha1 of the first ``count`` bytes or the error) as ``user`` reads ``path``."""
    done = subprocess.run(['runuser', '-u', user, '--', '/usr/bin/python3', '-c',
                           'import hashlib, sys\nwith open(sys.argv[1], "rb") as f: print(hashlib.sha1(f.read(%d)).hexdigest())'
                           % count, path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    return done.returncode, done.stdout.decode().strip()


def plain_guest(layout, name, path, role='peer', **params):
    device = dict(type='plain', memory_path=path, size='4M', role=role)
    return GuestManager(dict(dict(name=name, memory='64M', accel='tcg', ivshmem=[device], timeout=60), **params),
                        layout, False)


def test_a_region_admits_its_guests_and_host_accounts_only_and_keeps_its_owner_and_mode(builtin_lab, reader):
    lab, tag = builtin_lab, uuid.uuid4().hex[:6]
    region = dict(name='r' + tag, size='4M', members=['ivg-pm-' + tag, 'ivg-pp-' + tag, reader])
    made = RegionManager(region, lab.layout, True).run('present')  # check mode: predicted, nothing made
    assert made['changed'] and made['region']['state'] == 'present'
    path = made['region']['path']
    assert not os.path.exists(path)
    made = RegionManager(region, lab.layout, False).run('present')
    assert made['changed'] and made['region']['group'] == 'ivm-r' + tag and made['region']['mode'] == '0660'
    info = os.stat(path)
    assert (info.st_uid, grp.getgrgid(info.st_gid).gr_name, stat.S_IMODE(info.st_mode), info.st_size) == (
        0, 'ivm-r' + tag, 0o660, 4 << 20)
    assert sorted(grp.getgrnam('ivm-r' + tag).gr_mem) == sorted(region['members'])
    assert not RegionManager(region, lab.layout, False).run('present')['changed']  # idempotent
    try:
        for name, role in (('pm-' + tag, 'master'), ('pp-' + tag, 'peer')):
            lab.guests.append(name)
            assert plain_guest(lab.layout, name, path, role).run('running')['guest']['state'] == 'running'
        # A guest of the fleet that is not a member: its QEMU cannot open the region.
        lab.guests.append('px-' + tag)
        with pytest.raises(FleetError) as info:
            plain_guest(lab.layout, 'px-' + tag, path).run('running')
        assert 'Permission denied' in str(info.value), info.value
        assert read_as(reader, path)[0] == 0
        status, said = read_as('nobody', path)
        assert status != 0 and 'Permission denied' in said, said
        # Mode drift is put right; a file of another is refused.
        os.chmod(path, 0o666)
        again = RegionManager(region, lab.layout, False).run('present')
        assert again['changed'] and stat.S_IMODE(os.stat(path).st_mode) == 0o660
    finally:
        for name in list(lab.guests):
            GuestManager(dict(name=name, timeout=10), lab.layout, False).run('absent')
        lab.guests = []
    gone = RegionManager(region, lab.layout, False).run('absent')
    assert gone['changed'] and not os.path.exists(path)
    with pytest.raises(KeyError):
        grp.getgrnam('ivm-r' + tag)


def test_a_plain_device_without_its_file_is_refused_so_qemu_never_makes_it(builtin_lab):
    path = os.path.join(builtin_lab.root, 'nothing-here')
    builtin_lab.guests.append('pn')
    with pytest.raises(ValidationError) as info:
        plain_guest(builtin_lab.layout, 'pn', path, 'master').run('running')
    assert info.value.field == 'ivshmem[0].memory_path' and 'ivshmem.fleet.region' in str(info.value)
    assert not os.path.exists(path)


def test_a_region_named_first_by_another_account_is_refused(builtin_lab):
    tag = uuid.uuid4().hex[:6]
    path = '/dev/shm/ivshmem-fleet-s' + tag
    with open(path, 'wb') as handle:
        handle.write(bytes(4 << 20))
    os.chown(path, 65534, 65534)  # nobody's, made before the region
    try:
        with pytest.raises(FleetError) as info:
            RegionManager(dict(name='s' + tag, size='4M'), builtin_lab.layout, False).run('present')
        assert 'refusing it' in str(info.value)
        assert os.stat(path).st_uid == 65534  # left as it was
    finally:
        os.unlink(path)


def test_a_plain_group_moves_whole_with_its_memory_and_its_host_reader_reads_it_there(reader):
    hosts = TwoHosts(lab_root(), uuid.uuid4().hex[:6], type='plain', host_accounts=[reader])
    try:
        hosts.deploy('a')
        pattern = os.urandom(4 << 20)
        with open(hosts.memory('a'), 'r+b') as handle:
            handle.write(pattern)
        digest = hashlib.sha1(pattern).hexdigest()
        assert read_as(reader, hosts.memory('a')) == (0, digest)
        report = hosts.engine('a', 'b').run()
        assert report['outcome'] == 'moved', report
        here = hosts.where('b')
        assert [here[n] for n in ('g-master', 'g-peer1', 'g-peer2')] == ['running'] * 3, here
        assert set(hosts.where('a').values()) == {'absent'} and not hosts.memory('a')
        path = hosts.memory('b')
        with open(path, 'rb') as handle:
            assert hashlib.sha1(handle.read()).hexdigest() == digest
        info = os.stat(path)
        assert (info.st_uid, grp.getgrgid(info.st_gid).gr_name, stat.S_IMODE(info.st_mode)) == (0, 'ivm-g', 0o660)
        assert read_as(reader, path) == (0, digest)  # the host reader reads it on b
    finally:
        hosts.teardown()


def test_a_region_where_another_account_could_swap_the_path_is_refused_before_anything_is_made(builtin_lab):
    tag = uuid.uuid4().hex[:6]
    shared = os.path.join(builtin_lab.root, 'open')
    os.mkdir(shared)
    os.chmod(shared, 0o777)  # anyone may rename or replace entries here
    with pytest.raises(ValidationError) as info:
        RegionManager(dict(name='o' + tag, size='4M', memory_dir=os.path.join(shared, 'regions')),
                      builtin_lab.layout, False).run('present')
    assert info.value.field == 'memory_dir' and 'not sticky' in str(info.value)
    assert os.listdir(shared) == []
    with pytest.raises(KeyError):
        grp.getgrnam('ivm-o' + tag)
