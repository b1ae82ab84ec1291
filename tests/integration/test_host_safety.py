"""Root's hands on the host: what the service account (or any local user) plants is never followed.

Each case replays an attack from the security review as the attacker would set it up, then runs
the collection's code as root (the modules run as root) and checks the victim is untouched.
"""
import json
import os
import pwd
import stat

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import control_request
from ansible_collections.ivshmem.fleet.plugins.module_utils._host import HostError
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import server_paths, server_status


@pytest.fixture
def lab(builtin_lab):
    return builtin_lab


@pytest.fixture
def victim(lab):
    """A root-owned 0600 file the attacker wants overwritten, re-moded or deleted."""
    path = os.path.join(lab.root, 'victim')
    with open(path, 'w') as handle:
        handle.write('root secret\n')
    os.chmod(path, 0o600)
    return path


def untouched(path):
    info = os.lstat(path)
    with open(path) as handle:
        return (handle.read(), stat.S_IMODE(info.st_mode), info.st_uid) == ('root secret\n', 0o600, 0)


def test_a_link_planted_for_roots_temporary_file_is_not_followed(lab, victim):
    lab.server('s')
    record = server_paths(lab.layout, 's')['record']
    # The service account owns the server's directory: it plants the temporary name root used.
    os.symlink(victim, '%s.tmp.%d' % (record, os.getpid()))
    lab.server('s', state='restarted', vectors=4)  # new settings: root rewrites the record
    assert untouched(victim)
    assert stat.S_ISREG(os.lstat(record).st_mode) and json.load(open(record))['vectors'] == 4


def test_a_record_replaced_by_a_link_is_not_read_through(lab, victim):
    lab.server('s')
    record = server_paths(lab.layout, 's')['record']
    with open(record) as handle:
        saved = handle.read()
    with open(victim, 'w') as handle:  # a root-only file that happens to be a record
        handle.write(saved)
    os.unlink(record)
    os.symlink(victim, record)
    try:
        assert server_status(lab.layout, 's') is None
    finally:
        os.unlink(record)
        with open(record, 'w') as handle:
            handle.write(saved)


def test_an_existing_memory_dir_keeps_its_mode(lab):
    shared = os.path.join(lab.root, 'hugepages')
    os.mkdir(shared)
    os.chmod(shared, 0o1777)  # as /dev/shm is
    lab.server('s', memory_dir=shared)
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777


def test_a_squatted_memory_name_is_refused(lab):
    name = 't-%s-squat' % lab.tag
    squatted = os.path.join('/dev/shm', name)
    with open(squatted, 'w') as handle:  # another account creates the name first, readable by all
        handle.write('squatter')
    os.chown(squatted, pwd.getpwnam('nobody').pw_uid, -1)
    os.chmod(squatted, 0o666)
    try:
        with pytest.raises(Exception) as info:
            lab.server('s', shm_name=name, timeout=10)
        assert 'squatted' in str(info.value) or 'not a file of' in str(info.value)
        assert open(squatted).read() == 'squatter' and os.stat(squatted).st_size == 8
    finally:
        os.unlink(squatted)


def test_a_stale_memory_file_of_ours_is_reused(lab):
    first = lab.server('s')['server']
    memory = first['memory']
    with open(memory, 'r+b') as handle:
        handle.write(b'kept across a crash')
    os.kill(first['pid'], 9)  # the memory file stays behind, as after a crash
    lab.server('s', state='restarted')
    with open(memory, 'rb') as handle:
        assert handle.read(19) == b'kept across a crash'


def test_removal_never_follows_the_record_to_a_file_of_the_attackers_choice(lab, victim):
    lab.server('s')
    record = server_paths(lab.layout, 's')['record']
    with open(record) as handle:
        spec = json.load(handle)
    spec.update(memory_path=victim, memory_dir=os.path.dirname(victim), shm_name=os.path.basename(victim))
    with open(record, 'w') as handle:  # the record rewritten to point at the victim
        json.dump(spec, handle)
    try:
        lab.server('s', state='absent')
    except HostError as exc:  # refusing is fine; deleting is not
        assert 'not removed' in str(exc)
    assert untouched(victim)


def as_service_account(action):
    """Run ``action()`` in a child as the service account (a guest's QEMU runs as it); its result."""
    account = pwd.getpwnam('ivshmem')
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            os.write(write_end, str(action()).encode())
        except BaseException as exc:  # noqa: B036 (the child reports whatever happened)
            os.write(write_end, ('%s: %s' % (type(exc).__name__, exc)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    return result


def test_only_root_moves_the_admission_hold(lab):
    lab.server('s', admission='held', hold_for='m')
    control = lab.layout.server_control('s')
    # The control socket belongs to the service account, which every guest's QEMU runs as.
    answer = as_service_account(lambda: control_request(control, 'release'))
    assert 'ControlError' in answer and 'needs root' in answer
    answer = as_service_account(lambda: control_request(control, 'status')['hold'])
    assert answer == 'm'  # status is open to the account; the hold stayed
    assert control_request(control, 'status')['hold'] == 'm'
    assert control_request(control, 'release')['hold'] is None  # root may
