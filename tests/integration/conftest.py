"""Real QEMU, real servers, real QMP: a small lab on this machine for the integration tests."""
import ctypes
import fcntl
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _hugepages
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import GuestManager, guest_status
from ansible_collections.ivshmem.fleet.plugins.module_utils._migration import Migration
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import ServerManager, server_status
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(REPO, '.cache', 'collections')
_PR_SET_MDWE = 65  # prctl: deny memory that is both writable and executable, kept across exec
_PR_MDWE_REFUSE_EXEC_GAIN = 1
sys.path.insert(0, os.path.join(REPO, 'tests', 'lab'))
import idle_guest  # noqa: E402
from move_lab import unmount_hugetlbfs  # noqa: E402

UPSTREAM = os.environ.get('IVSHMEM_FLEET_UPSTREAM_SERVER',
                          os.path.join(REPO, '.cache', 'upstream', 'bin', 'ivshmem-server'))
# A second QEMU version beside the distribution's 7.2: 10.0 from bookworm-backports, unpacked
# by scripts/fetch-qemu-backports.sh.
QEMU_BACKPORTS = os.path.join(os.environ.get('IVSHMEM_FLEET_CACHE', os.path.join(REPO, '.cache')),
                              'qemu-backports', 'bin', 'qemu-system-x86_64')


class Lab:
    """Servers and guests under one runtime directory; everything is removed at the end."""

    def __init__(self, root, implementation):
        self.layout = Layout(root)
        self.root = root
        self.implementation = implementation
        self.tag = uuid.uuid4().hex[:6]  # unique shm names: tests never share memory by accident
        self.servers, self.guests = [], []

    def server(self, name, state='started', **params):
        params = dict(dict(name=name, implementation=self.implementation, size='4M', vectors=2, timeout=20,
                           program_dir=os.path.join(self.root, 'program'), shm_name='t-%s-%s' % (self.tag, name)),
                      **params)
        if self.implementation == 'qemu':
            params['binary'] = UPSTREAM
            if params.pop('admission', None) == 'held':
                params.pop('hold_for', None)  # upstream has no hold: the test starts nothing early
        if name not in self.servers:
            self.servers.append(name)
        return ServerManager(params, self.layout, False).run(state)

    def idle_kernel(self):
        """The lab guests' kernel (tests/lab/idle_guest.py), written into this lab once."""
        path = os.path.join(self.root, 'idle-guest.bin')
        if not os.path.exists(path):
            with open(path, 'wb') as handle:
                handle.write(idle_guest.image())
            os.chmod(path, 0o644)
        return path

    def memory_of(self, server):
        return server_status(self.layout, server)['memory']

    def guest(self, name, server, role='peer', state='running', vectors=2, **params):
        devices = [dict(type='doorbell', server=server, role=role, vectors=vectors)]
        params = dict(dict(name=name, memory='64M', accel='tcg', ivshmem=devices, timeout=60), **params)
        if name not in self.guests:
            self.guests.append(name)
        return GuestManager(params, self.layout, False).run(state)

    def status(self, name):
        return guest_status(self.layout, name)

    def migrate(self, guest, destination, **params):
        params = dict(dict(guest=guest, destination=destination, phase='full', timeout=60, verify=True, checksum='sha1',
                           stop_source=True, max_bandwidth=10 << 30, downtime_limit=300), **params)
        return Migration(params, self.layout, False).run('migrated')

    def teardown(self):
        for name in self.guests:
            GuestManager(dict(name=name, timeout=10), self.layout, False).run('absent')
        for name in self.servers:
            ServerManager(dict(name=name, implementation='builtin', timeout=10), self.layout, False).run('absent')
        shutil.rmtree(self.root, ignore_errors=True)


def build_test_guest():
    """The Linux test guest's directory (vmlinuz, initrd.img), built when its recipe changed."""
    return subprocess.run([os.path.join(REPO, 'tests', 'guest', 'build-guest.sh')], check=True,
                          stdout=subprocess.PIPE).stdout.decode().strip().splitlines()[-1]


@pytest.fixture(scope='session')
def test_guest():
    return build_test_guest()


def lab_root():
    # Guests and servers run as the unprivileged service user: pytest's own temporary
    # directories (mode 0700 under root) are out of its reach.
    base = '/tmp/ivshmem-fleet-tests'
    os.makedirs(base, exist_ok=True)
    os.chmod(base, 0o755)
    root = tempfile.mkdtemp(dir=base)
    os.chmod(root, 0o755)
    return root


def _lab(implementation):
    lab = Lab(lab_root(), implementation)
    yield lab
    lab.teardown()


@pytest.fixture(params=['builtin', 'qemu'])
def lab(request):
    if request.param == 'qemu' and not os.access(UPSTREAM, os.X_OK):
        pytest.fail('upstream ivshmem-server missing at %s: run scripts/build-upstream-ivshmem.sh' % UPSTREAM)
    yield from _lab(request.param)


@pytest.fixture(scope='session')
def qemu_backports():
    """The path of QEMU 10.0 (a wrapper that gives it its own firmware and modules)."""
    if not os.access(QEMU_BACKPORTS, os.X_OK):
        pytest.fail('QEMU from backports missing at %s: run scripts/fetch-qemu-backports.sh' % QEMU_BACKPORTS)
    return QEMU_BACKPORTS


@pytest.fixture
def builtin_lab():
    """A lab with our server only: for what upstream's server has no part in."""
    yield from _lab('builtin')


@pytest.fixture
def start_server():
    """Our server as a foreground process started directly, as an operator would.

    ``start(*options, fd_limit=None, deny_write_execute=False)`` returns (process, socket path, log
    path); ``deny_write_execute`` starts it under the kernel's MDWE, what systemd's
    MemoryDenyWriteExecute gives the server's unit. At the end each server is stopped and must have
    removed its socket and memory.
    """
    started = []

    def start(*options, fd_limit=None, deny_write_execute=False):
        root = lab_root()
        sock = os.path.join(root, 's.sock')
        name = 'srv-%d-%d' % (os.getpid(), len(started))
        argv = [sys.executable, '-c', 'import sys; from ansible_collections.ivshmem.fleet.plugins.module_utils.'
                'ivshmem_server.cli import main; sys.exit(main())', '-F', '-S', sock, '-M', name, '-l', '1M']
        log = os.path.join(root, 'server.log')

        def limit_fds():
            if fd_limit:
                resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))
            if deny_write_execute and ctypes.CDLL(None).prctl(_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
                os._exit(97)  # the kernel has no MDWE (before 6.3): the test fails on the missing server
        with open(log, 'wb') as stderr:
            process = subprocess.Popen(argv + list(options), env=dict(os.environ, PYTHONPATH=COLLECTIONS),
                                       stderr=stderr, preexec_fn=limit_fds)
        started.append((process, sock, name))
        wait_for('server', lambda: os.path.exists(sock + '.ctl'), 10)
        return process, sock, log

    yield start
    for process, sock, name in started:
        process.terminate()
        process.wait(10)
        assert not os.path.exists(sock)
        memory = '/dev/shm/' + name
        if os.path.exists(memory):
            # Kept only while clients still mapped it (a stop never splits a group's memory).
            with open(os.path.join(os.path.dirname(sock), 'server.log')) as handle:
                assert 'keeping the memory file %s' % memory in handle.read()
            os.unlink(memory)


HUGEPAGE_LOCK = '/run/ivshmem-fleet-test-hugepages.lock'
PAGE_2M = 2 << 20


def hugepages_in_use():
    """2 MiB pages of the kernel's pool that are taken or promised (total - free + reserved)."""
    pool = _hugepages.pools()['2M']
    return pool['total'] - pool['free'] + pool['reserved']


class HugepagePool:
    """The kernel's 2 MiB pool for one test, which holds the lock every test that changes the
    pool takes (the pool is the machine's). ``pool(pages)``: at least ``pages`` pages available
    beyond those in use now (never lowered below what was found). ``pool.hold(leave)``: every page
    available now but ``leave`` taken by a placeholder file on a hugetlbfs of its own (a host's
    pool short, honestly: the pages are gone); ``pool.release()`` gives them back. At the end the
    placeholder goes, and the pool is set back to what was found, never below the pages in use."""

    def __init__(self):
        self.total = os.path.join(_hugepages.SYSFS, 'hugepages-2048kB', 'nr_hugepages')
        self.found = _hugepages.pools()['2M']['total']
        self.mount = None

    def __call__(self, pages):
        wanted = max(self.found, hugepages_in_use() + pages)
        for _attempt in range(2):
            self._set(wanted)
            pool = _hugepages.pools()['2M']
            if pool['total'] >= wanted:
                return pool
            # Fragmented memory gives fewer pages than asked: compacted once, asked again.
            with open('/proc/sys/vm/compact_memory', 'w') as handle:
                handle.write('1\n')
        pytest.fail('the kernel gave %d 2 MiB huge pages of the %d asked (memory fragmented or short)' % (
            pool['total'], wanted))

    def _set(self, pages):
        with open(self.total, 'w') as handle:
            handle.write('%d\n' % pages)

    def hold(self, leave=0):
        self.release()
        pages = _hugepages.pools()['2M']['available'] - leave
        assert pages >= 0, 'fewer than %d pages available to leave' % leave
        self.mount = lab_root()
        subprocess.run(['mount', '-t', 'hugetlbfs', '-o', 'pagesize=2M,mode=0700', 'ivshmem-fleet-test', self.mount],
                       check=True)
        fd = os.open(os.path.join(self.mount, 'placeholder'), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            if pages:
                os.posix_fallocate(fd, 0, pages * PAGE_2M)  # taken now (hugetlbfs takes no write())
        finally:
            os.close(fd)
        assert _hugepages.pools()['2M']['available'] == leave
        return pages

    def release(self):
        if self.mount:
            unmount_hugetlbfs(self.mount)  # the file's pages go with the file system
            os.rmdir(self.mount)
            self.mount = None

    def restore(self):
        self.release()
        self._set(max(self.found, hugepages_in_use()))


@pytest.fixture
def hugepage_pool():
    """The machine's 2 MiB huge page pool for this test, locked (see HugepagePool)."""
    with open(HUGEPAGE_LOCK, 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pool = HugepagePool()
        try:
            yield pool
        finally:
            pool.restore()
