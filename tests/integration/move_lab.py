"""Two "hosts" on this machine for the group move engine: two runtime directories, two servers
of the group, real QEMU and QMP, each driven through a LocalHost handle (the host side run
in-process). Used by test_group_move.py and bench/move_outage.py.

Run as a script, it moves the group once and prints each step it starts (``STEP <name>``), so
a test can kill it at any step as a controller would be killed:
    python move_lab.py STATE_JSON SOURCE DESTINATION
"""
import json
import os
import socket
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), '.cache', 'collections'))

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host, _hugepages, _tls  # noqa: E402
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import normalize_group, on_host  # noqa: E402
from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import GuestManager, guest_status  # noqa: E402
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout, RegionSpec  # noqa: E402
from ansible_collections.ivshmem.fleet.plugins.module_utils._module import OPERATIONAL  # noqa: E402
from ansible_collections.ivshmem.fleet.plugins.module_utils._move import run_step  # noqa: E402
from ansible_collections.ivshmem.fleet.plugins.module_utils._move_journal import MoveError, read_journal  # noqa: E402
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import HUGEPAGE_SIZES  # noqa: E402
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._move_engine import (  # noqa: E402
    GroupMove, MoveFailed, Safeguards, StepFailed)
from ansible_collections.ivshmem.fleet.plugins.module_utils._region import Region, RegionManager, region_status  # noqa: E402
from ansible_collections.ivshmem.fleet.plugins.module_utils._server import ServerManager, server_status  # noqa: E402
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._pki import Authority  # noqa: E402


def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def unmount_hugetlbfs(path):
    """The hugetlbfs at ``path``, if one is mounted there (lazily: a closing process may hold it)."""
    if (_hugepages.mount_of(path) or ('',))[0] == 'hugetlbfs':
        subprocess.run(['umount', '-l', path], check=True)


class LocalHost:
    """A host handle for a runtime directory on this machine: the move_host module's step run
    in-process, its failures as the engine gets them from a real host (StepFailed)."""

    def __init__(self, layout, server_overrides=None, guest_overrides=None):
        self.layout = layout
        self.server_overrides = server_overrides or {}
        self.guest_overrides = guest_overrides or {}

    def call(self, params):
        params = dict(params, server_overrides=self.server_overrides, guest_overrides=self.guest_overrides)
        try:
            return run_step(params, self.layout)
        except (ValidationError, MoveError) as exc:
            raise StepFailed(str(exc))
        except OPERATIONAL as exc:
            raise StepFailed('%s: %s' % (type(exc).__name__, exc))


class WithoutLock(Safeguards):
    """No lock: a run never sees another one that lives."""

    def holder_alive(self, record):
        return False


class WithoutJournals(Safeguards):
    """No journals: after a failure the engine guesses "roll back" (risks two masters)."""
    journals = False


class HoldWithoutJournals(WithoutJournals):
    """No journals: after a failure the engine guesses "touch nothing" (risks a frozen group)."""

    def before_recovery(self, error, report):
        raise MoveFailed('%s; (test: no journal) the group is left as it is' % error, report)


WEAKENED = {'lock': WithoutLock, 'journal': WithoutJournals, 'journal-hold': HoldWithoutJournals}


def weakened(names):
    """The engine's safeguards without ``names`` (of WEAKENED); all of them when there are none."""
    names = set(names) - ({'journal'} if 'journal-hold' in names else set())
    if not names:
        return None
    return type('Weakened', tuple(WEAKENED[name] for name in sorted(names)), {})()


class TwoHosts:
    """Hosts 'a' and 'b' under ``root``; the group's memory file is distinct per host."""

    def __init__(self, root, tag, size='4M', peers=2, memory='64M', master=None, peer=None, binaries=None,
                 **group_options):
        """``master`` and ``peer``: guest options added to the master and to every peer (a kernel
        to boot, say); ``binaries``: {host: the QEMU it runs} where not the distribution's (two QEMU
        versions on one machine); ``group_options``: the group's own (peer_mode, ...)."""
        self.root, self.tag = root, tag
        self.binaries = dict(binaries or {})
        self.layouts = dict((h, Layout(os.path.join(root, h))) for h in ('a', 'b'))
        group = dict(group_options, name='g', host='a', size=size,
                     vectors=None if group_options.get('type') == 'plain' else 2,
                     master=dict(master or {}, name='g-master', memory=memory, accel='tcg'),
                     peers=[dict(peer or {}, name='g-peer%d' % i, memory=memory, accel='tcg') for i in range(1, peers + 1)])
        self.group = normalize_group(0, group, ['a', 'b'], self.layouts['a'])
        self.port = free_port()

    def state(self):
        return {'root': self.root, 'tag': self.tag, 'group': self.group, 'port': self.port, 'binaries': self.binaries}

    @classmethod
    def from_state(cls, state):
        hosts = cls.__new__(cls)
        hosts.root, hosts.tag, hosts.group, hosts.port = state['root'], state['tag'], state['group'], state['port']
        hosts.binaries = state.get('binaries') or {}
        hosts.layouts = dict((h, Layout(os.path.join(hosts.root, h))) for h in ('a', 'b'))
        return hosts

    def overrides(self, host):
        return {'shm_name': 't-%s-%s-g' % (self.tag, host), 'program_dir': os.path.join(self.root, 'program')}

    def guest_overrides(self, host):
        """Guest options of ``host`` (as the host variable ivshmem_fleet_guest_overrides gives them)."""
        return {'binary': self.binaries[host]} if host in self.binaries else {}

    def tls_dir(self, host):
        return os.path.join(self.root, host, 'tls')

    def install_credentials(self, host, authority=None, name=None):
        """``host``'s migration credentials, as ivshmem.fleet.migration_credentials installs them
        (from this lab's CA unless ``authority`` is another; certificate of ``name``, default ``host``)."""
        authority = authority or Authority(os.path.join(self.root, 'pki'))
        with authority.locked():
            authority.load()
            files = authority.credentials(name or host, [], ['127.0.0.1'])
        _host.ensure_account('ivshmem', 'ivshmem', False)
        # Another authority's credentials replace the lab's: the tests make impostors that way.
        _tls.install(self.tls_dir(host), files, 'ivshmem', False, replace_ca=True)

    def tls_dirs(self):
        for host in ('a', 'b'):
            if _tls.missing(self.tls_dir(host)):
                self.install_credentials(host)
        return dict((h, self.tls_dir(h)) for h in ('a', 'b'))

    def handles(self):
        return dict((h, LocalHost(self.layouts[h], self.overrides(h), self.guest_overrides(h))) for h in ('a', 'b'))

    def deploy(self, host='a'):
        layout = self.layouts[host]
        group = on_host(self.group, self.overrides(host), self.guest_overrides(host))
        if group['region']:
            RegionManager(group['region'], layout, False).run('present')
        else:
            ServerManager(dict(group['server'], timeout=20), layout, False).run('started')
        for guest in [group['master']] + group['peers']:
            GuestManager(dict(guest, timeout=60), layout, False).run('running')

    def engine(self, source, destination, **options):
        options = dict(dict(uri='tcp:127.0.0.1:%d' % self.port, start_timeout=60, attempts=1, backoff=0,
                            progress_interval=0.5), **options)
        if 'tls_dirs' not in options:
            options['tls_dirs'] = self.tls_dirs()  # encrypted, as group_migrate moves by default
        # IVSHMEM_FLEET_TEST_DISABLE=journal, journal-hold or lock: run the matrix without them (it must fail).
        disabled = os.environ.get('IVSHMEM_FLEET_TEST_DISABLE')
        return GroupMove(self.group, source, destination, self.handles(), options,
                         observer=options.pop('observer', None), progress=options.pop('progress', None),
                         safeguards=weakened(disabled.split(',') if disabled else ()))

    def memory(self, host):
        if self.group.get('region'):
            status = region_status(self.layouts[host], 'g')
            return status and status['state'] == 'present' and status['path']
        status = server_status(self.layouts[host], 'g')
        return status and status['memory']

    def where(self, host):
        """{guest: state} of the group on ``host``."""
        names = [self.group['master']['name']] + [p['name'] for p in self.group['peers']]
        found = {}
        for name in names:
            status = guest_status(self.layouts[host], name)
            found[name] = 'absent' if status is None else status['state']
            if status is not None and status['pid'] is not None:
                found[name + ':id'] = status['ivshmem'][0].get('server_id')
                found[name + ':ivposition'] = status['ivshmem'][0].get('ivposition')
        return found

    def journal(self, host):
        return read_journal(self.layouts[host], 'g')

    def teardown(self):
        for layout in self.layouts.values():
            for name in _host.names(layout.kind_dir('guests')):
                GuestManager(dict(name=name, timeout=10), layout, False).run('absent')
            for name in _host.names(layout.kind_dir('servers')):
                ServerManager(dict(name=name, implementation='builtin', timeout=10), layout, False).run('absent')
            for name in _host.names(layout.kind_dir('regions')):
                Region(layout, RegionSpec(region_status(layout, name)['spec'])).remove()
            for size in HUGEPAGE_SIZES:  # the fleet's own, mounted by the first memory made on it
                unmount_hugetlbfs(layout.hugetlbfs(size))


def main():
    with open(sys.argv[1]) as handle:
        hosts = TwoHosts.from_state(json.load(handle))

    printing = threading.Lock()

    def observer(step):
        # send and verify run on two threads: one line per step, never two run together
        # ('STEP send:aSTEP verify:b'), or the test waiting for a step never sees it.
        with printing:
            print('STEP %s' % step, flush=True)

    options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    report = hosts.engine(sys.argv[2], sys.argv[3], observer=observer, **options).run()
    print('REPORT %s' % json.dumps(report), flush=True)


if __name__ == '__main__':
    main()
