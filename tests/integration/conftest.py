"""Real QEMU, real servers, real QMP: a small lab on this machine for the integration tests."""
import os
import shutil
import tempfile
import uuid

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import GuestManager, guest_status
from ansible_collections.ivshmem.fleet.plugins.module_utils._migration import Migration
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import ServerManager, server_status

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UPSTREAM = os.environ.get('IVSHMEM_FLEET_UPSTREAM_SERVER',
                          os.path.join(REPO, '.cache', 'upstream', 'bin', 'ivshmem-server'))


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


def lab_root():
    # Guests and servers run as the unprivileged service user: pytest's own temporary
    # directories (mode 0700 under root) are out of its reach.
    base = '/tmp/ivshmem-fleet-tests'
    os.makedirs(base, exist_ok=True)
    os.chmod(base, 0o755)
    root = tempfile.mkdtemp(dir=base)
    os.chmod(root, 0o755)
    return root


@pytest.fixture(params=['builtin', 'qemu'])
def lab(request):
    if request.param == 'qemu' and not os.access(UPSTREAM, os.X_OK):
        pytest.fail('upstream ivshmem-server missing at %s: run scripts/build-upstream-ivshmem.sh' % UPSTREAM)
    lab = Lab(lab_root(), request.param)
    yield lab
    lab.teardown()
