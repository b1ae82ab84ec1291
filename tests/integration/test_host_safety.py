"""Root's hands on the host: what the service account (or any local user) plants is never followed.

Each case replays an attack from the security review as the attacker would set it up, then runs
the collection's code as root (the modules run as root) and checks the victim is untouched.
"""
import grp
import json
import os
import pwd
import stat
import subprocess
import sys

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._control_protocol import control_request
from ansible_collections.ivshmem.fleet.plugins.module_utils._host import HostError, ensure_account, process_alive
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import SERVICE_GROUP, guest_account, server_account
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import server_paths, server_status
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import wait_for

from accounts import as_account


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


def test_only_root_moves_the_admission_hold(lab):
    lab.server('s', admission='held', hold_for='m')
    control = lab.layout.server_control('s')
    # The control socket belongs to the server's own account: even that account may not move the hold.
    answer = as_account(server_account('s'), lambda: control_request(control, 'release'))
    assert 'ControlError' in answer and 'needs root' in answer
    answer = as_account(server_account('s'), lambda: control_request(control, 'status')['hold'])
    assert answer == 'm'  # status is open to the account; the hold stayed
    assert control_request(control, 'status')['hold'] == 'm'
    assert control_request(control, 'release')['hold'] is None  # root may


def forger(lab, impersonates, server, user):
    """A real QEMU started by hand under ``user`` as ``-name impersonates``, its device on the
    server: what any local process could do. Returns its client entry in the server's status
    once the server decided (None: refused); the process is gone by then."""
    ensure_account(user, SERVICE_GROUP, False)
    argv = ['/usr/bin/qemu-system-x86_64', '-name', impersonates, '-machine', 'pc', '-accel', 'tcg', '-m', '64',
            '-nodefaults', '-display', 'none', '-chardev', 'socket,path=%s,id=c' % lab.layout.server_socket(server),
            '-device', 'ivshmem-doorbell,chardev=c,vectors=2']
    before = server_status(lab.layout, server)['refused']
    process = subprocess.Popen(argv, user=pwd.getpwnam(user).pw_uid, group=grp.getgrnam(SERVICE_GROUP).gr_gid,
                               extra_groups=[], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def verdict():
            status = server_status(lab.layout, server)
            mine = [c for c in status['clients'] if c['pid'] == process.pid]
            return mine[0] if mine else 'refused' if status['refused'] > before else None
        entry, _waited = wait_for('the server to admit or refuse the forger', verdict, 60)
        return None if entry == 'refused' else entry
    finally:
        process.kill()
        process.wait()


def test_a_process_calling_itself_the_master_gets_neither_its_id_nor_past_the_hold(lab):
    """Before, pins and the hold trusted /proc/PID/cmdline: any process started with -name m took
    ID 0 and passed the hold. Now the server knows m by its account (SO_PEERCRED)."""
    lab.server('s', pins={'m': 0, 'p': 1}, admission='held', hold_for='m')
    # A compromised peer (p's own account) and an outsider (an account of no guest of s).
    for user in (guest_account('p'), guest_account('outsider')):
        assert forger(lab, 'm', 's', user) is None, user
    assert server_status(lab.layout, 's')['refused'] == 2
    master = lab.guest('m', 's', role='master')['guest']['ivshmem'][0]
    assert (master['server_id'], master['ivposition']) == (0, 0)


def test_only_the_group_s_own_accounts_are_admitted(lab):
    """A server that knows its group admits nobody else, whatever it calls itself; the group's
    guests get their pinned IDs, and status says where each name comes from."""
    lab.server('s', pins={'m': 0, 'p': 1})
    lab.guest('m', 's', role='master')
    assert forger(lab, 'p', 's', guest_account('outsider')) is None
    assert server_status(lab.layout, 's')['refused'] == 1  # refused by the server, not by the socket's mode
    peer = lab.guest('p', 's')['guest']['ivshmem'][0]
    assert (peer['server_id'], peer['ivposition']) == (1, 1)
    names = dict((c['id'], (c['name'], c['name_from'], pwd.getpwuid(c['uid']).pw_name))
                 for c in control_request(lab.layout.server_control('s'), 'status')['clients'])
    assert names == {0: ('m', 'account', guest_account('m')), 1: ('p', 'account', guest_account('p'))}


def test_a_server_with_the_defaults_admits_only_the_guests_started_against_it(lab):
    """Before, a server started without pins or admit list admitted every account of the ivshmem
    group: any of them could map the memory. Now it admits the guests the guest module starts
    against it (root tells it their accounts), and admit_any opens it again."""
    lab.server('s')
    master = lab.guest('m', 's', role='master')['guest']['ivshmem'][0]
    assert (master['server_id'], master['ivposition']) == (0, 0)
    assert forger(lab, 'p', 's', guest_account('outsider')) is None
    # Not even the server's own account (the control socket is its own) admits anyone.
    answer = as_account(server_account('s'), lambda: control_request(
        lab.layout.server_control('s'), 'admit', guest='p', uid=pwd.getpwnam(guest_account('outsider')).pw_uid))
    assert 'ControlError' in answer and 'needs root' in answer
    assert lab.guest('p', 's')['guest']['ivshmem'][0]['server_id'] == 1
    lab.server('open', admit_any=True)
    lab.guest('m2', 'open', role='master')
    assert forger(lab, 'p', 'open', guest_account('outsider')) is not None


def test_a_guest_s_account_opens_no_other_group_s_memory_qmp_or_control(lab):
    """Before, every server and guest ran as one account: a compromised QEMU could open every
    group's memory, every guest's QMP socket and every server's control socket."""
    import socket as sockets

    lab.server('a')
    lab.server('b')
    lab.guest('a-master', 'a', role='master')
    lab.guest('b-master', 'b', role='master')

    memory = lab.memory_of('b')

    def reach():
        found = []
        try:
            os.open(memory, os.O_RDWR)
            found.append('memory of b')
        except PermissionError:
            pass
        for what, path in (('qmp of b-master', lab.layout.guest_qmp('b-master')),
                           ('control of b', lab.layout.server_control('b'))):
            conn = sockets.socket(sockets.AF_UNIX)
            try:
                conn.connect(path)
                found.append(what)
            except PermissionError:
                pass
            finally:
                conn.close()
        return found

    assert as_account(guest_account('a-master'), reach) == '[]'


def plant(user, path, target=None, fifo=False):
    """As ``user`` (the account that owns the directory): replace ``path`` by a link to ``target``
    or by a FIFO."""
    def work():
        if os.path.lexists(path):
            os.unlink(path)
        if fifo:
            os.mkfifo(path)
        else:
            os.symlink(target, path)
        return 'planted'
    assert as_account(user, work) == 'planted'


def test_a_log_replaced_by_a_link_to_a_root_file_is_never_written_or_read(lab, victim):
    """The guest's account swaps its qemu.log for a link to a root-only file; the next start must
    neither append QEMU's output to the victim nor put the victim in an error message."""
    lab.server('s')
    lab.guest('g', 's', role='master')
    lab.guest('g', 's', role='master', state='stopped')
    log = os.path.join(lab.layout.guest_dir('g'), 'qemu.log')
    plant(guest_account('g'), log, victim)
    lab.server('s', state='restarted')
    lab.guest('g', 's', role='master')  # root opens the log for QEMU: a fresh one of root's
    assert untouched(victim)
    info = os.lstat(log)
    assert stat.S_ISREG(info.st_mode) and info.st_uid == 0
    # A failed start quotes the log's tail: never the victim's.
    lab.guest('g', 's', role='master', state='stopped')
    plant(guest_account('g'), log, victim)
    lab.server('s', state='restarted')
    with pytest.raises(Exception) as info:
        lab.guest('g', 's', role='master', extra_args=['-device', 'no-such-device'])
    assert 'root secret' not in str(info.value) and 'no-such-device' in str(info.value), info.value
    assert untouched(victim)


def test_a_server_pidfile_naming_the_master_never_gets_the_master_killed(lab):
    """The server's account writes its master QEMU's pid into server.pid: a stop must not kill the
    master (its RAM would be lost); the real server is found by the socket it listens on, and it
    is the one stopped."""
    lab.server('s')
    lab.guest('m', 's', role='master')
    master = lab.status('m')['pid']
    server = server_status(lab.layout, 's')['pid']
    pidfile = server_paths(lab.layout, 's')['pidfile']

    def lie():
        with open(pidfile + '.new', 'w') as handle:
            handle.write('%d\n' % master)
        os.rename(pidfile + '.new', pidfile)
        return 'written'
    assert as_account(server_account('s'), lie) == 'written'
    assert server_status(lab.layout, 's')['pid'] == server  # found by its socket, not by the lie
    lab.server('s', state='stopped')
    assert lab.status('m')['pid'] == master and lab.status('m')['state'] == 'running'
    # It was the real server that stopped.
    wait_for('the server to exit', lambda: not os.path.exists('/proc/%d' % server), 10)


@pytest.mark.parametrize('who', ['guest', 'server'])
def test_a_pidfile_naming_a_decoy_of_the_same_account_never_hides_the_real_process(lab, who):
    """The account writes the pid of another process of its own into its pidfile, one that even
    carries the socket's path in its command line (what the old check looked for): root still
    knows the process it started (held from spawn: pid and start time), so status names the real
    one and a stop stops it, not the decoy."""
    lab.server('s')
    lab.guest('m', 's', role='master')
    if who == 'guest':
        user, marker = guest_account('m'), lab.layout.guest_qmp('m')
        pidfile = os.path.join(lab.layout.guest_dir('m'), 'qemu.pid')
        real = lab.status('m')['pid']
    else:
        user, marker, pidfile = server_account('s'), lab.layout.server_socket('s'), server_paths(lab.layout, 's')['pidfile']
        real = server_status(lab.layout, 's')['pid']
    decoy = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', marker],
                             user=pwd.getpwnam(user).pw_uid, group=grp.getgrnam(SERVICE_GROUP).gr_gid, extra_groups=[])
    try:
        def lie():
            with open(pidfile + '.new', 'w') as handle:
                handle.write('%d\n' % decoy.pid)
            os.rename(pidfile + '.new', pidfile)
            return 'written'
        assert as_account(user, lie) == 'written'
        if who == 'guest':
            assert lab.status('m')['pid'] == real
            lab.guest('m', 's', role='master', state='stopped')
        else:
            assert server_status(lab.layout, 's')['pid'] == real
            lab.server('s', state='stopped')
        wait_for('the real process to exit', lambda: not process_alive(real), 10)  # (a zombie of pytest's, for QEMU)
        assert decoy.poll() is None  # the decoy was never signalled
    finally:
        decoy.kill()
        decoy.wait()


@pytest.mark.parametrize('what', ['qemu.pid', 'qemu.log', 'server.pid'])
def test_a_fifo_planted_for_a_pidfile_or_log_never_blocks_root(lab, what):
    lab.server('s')
    lab.guest('g', 's', role='master')
    if what == 'server.pid':
        path, owner = server_paths(lab.layout, 's')['pidfile'], server_account('s')
    else:
        path, owner = os.path.join(lab.layout.guest_dir('g'), what), guest_account('g')
    plant(owner, path, fifo=True)
    script = ('import sys; sys.path.insert(0, %r)\n'
              'from ansible_collections.ivshmem.fleet.plugins.module_utils._info import HostInfo\n'
              'from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import exit_log\n'
              'from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout\n'
              'layout = Layout(%r)\n'
              'HostInfo({}, layout, True).run("gathered")\n'
              'exit_log(layout, "g")\n'
              'print("answered")\n' % (os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
                  os.path.abspath(__file__)))), '.cache', 'collections'), lab.root))
    done = subprocess.run([sys.executable, '-c', script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=60, check=False)
    assert done.stdout.decode().strip().endswith('answered'), done.stdout.decode()[-2000:]
    # Still found (by the socket it listens on), so still managed: nothing leaks past a stop.
    assert lab.status('g')['pid'] is not None and server_status(lab.layout, 's')['pid'] is not None


def test_a_full_memory_filesystem_fails_the_start_naming_the_path(lab):
    """The whole region is reserved as the server starts: a tmpfs of 1 MiB cannot hold 4 MiB. It
    used to report started with no memory behind it, and the first guest to write got SIGBUS."""
    tiny = os.path.join(lab.root, 'tiny')
    os.mkdir(tiny)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m,mode=1777', 'tmpfs', tiny], check=True)
    try:
        with pytest.raises(Exception) as info:
            lab.server('s', memory_dir=tiny, size='4M', timeout=10)
        message = str(info.value)
        assert 'cannot reserve shared memory %s/t-%s-s of 4194304 bytes' % (tiny, lab.tag) in message, message
        assert 'No space left on device' in message, message
        assert os.listdir(tiny) == []  # nothing half-made left for the next server
    finally:
        subprocess.run(['umount', '-l', tiny], check=False)


def test_a_server_stopped_under_running_guests_keeps_their_memory(lab):
    """Stopping a server (SIGTERM) while guests map its memory unlinked the file: the next server
    handed fresh memory to new peers while the master kept the old, and the group split. The file
    stays; the next server reuses it, so a peer that joins shares the master's memory."""
    lab.server('s')
    lab.guest('m', 's', role='master')
    memory = lab.memory_of('s')
    with open(memory, 'r+b') as handle:
        handle.write(b'the group memory')
    os.kill(server_status(lab.layout, 's')['pid'], 15)
    wait_for('the server to stop', lambda: server_status(lab.layout, 's')['pid'] is None, 10)
    assert os.path.exists(memory)
    lab.server('s', state='started')
    with open(lab.memory_of('s'), 'rb') as handle:
        assert handle.read(16) == b'the group memory'


def test_a_squatted_memory_name_is_refused_for_the_upstream_server_too(tmp_path):
    """QEMU's ivshmem-server opens its memory name without O_EXCL: it used a file another account
    made first as it was (readable and writable by that account)."""
    from conftest import UPSTREAM, Lab, lab_root
    upstream = Lab(lab_root(), 'qemu')
    name = 't-%s-squat' % upstream.tag
    squatted = os.path.join('/dev/shm', name)
    with open(squatted, 'w') as handle:
        handle.write('squatter')
    os.chown(squatted, pwd.getpwnam('nobody').pw_uid, -1)
    os.chmod(squatted, 0o666)
    try:
        assert os.access(UPSTREAM, os.X_OK)
        with pytest.raises(Exception) as info:
            upstream.server('s', shm_name=name, timeout=10)
        assert 'squatted' in str(info.value) and getattr(info.value, 'field', None) == 'shm_name', info.value
        assert open(squatted).read() == 'squatter' and server_status(upstream.layout, 's') is None
        assert not os.path.exists(upstream.layout.server_dir('s'))  # nothing made for it
    finally:
        os.unlink(squatted)
        upstream.teardown()
