"""The modules driven through ansible-playbook against localhost (tests/playbooks/*.yml assert
check mode, a real run and an unchanged second run)."""
import grp
import json
import os
import re
import stat
import subprocess
import sys

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _hugepages, _tls

from conftest import REPO, hugepages_in_use, lab_root
from move_lab import unmount_hugetlbfs

PLAYBOOKS = os.path.join(REPO, 'tests', 'playbooks')


@pytest.mark.parametrize('playbook', sorted(p for p in os.listdir(PLAYBOOKS) if p.endswith('.yml')))
def test_playbook(playbook):
    root = lab_root()
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections'),
               ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0')
    bin_dir = os.path.dirname(sys.executable)
    result = subprocess.run(
        [os.path.join(bin_dir, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
         '-e', 'ansible_python_interpreter=%s' % sys.executable, '-e', 'runtime_dir=%s' % root,
         os.path.join(PLAYBOOKS, playbook)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600, check=False)
    output = result.stdout.decode('utf-8', 'replace')
    assert result.returncode == 0, output[-6000:]
    assert 'failed=0' in output


def run_playbook(args, root):
    return recap_changed(run_playbook_output(args))


def test_deploy_playbook_predicts_in_check_mode_and_converges_once(tmp_path, hugepage_pool):
    """ivshmem.fleet.deploy against localhost as the one hypervisor: check mode predicts and
    changes nothing, the real run deploys, then check mode and a second run report no change. The
    doorbell group's memory and its master's RAM are on huge pages: the hypervisor role grows the
    pool to what the plan says the host's groups take."""
    hugepage_pool(0)  # locked, and the pool as it was afterwards
    pool_before, used_before = _hugepages.pools()['2M']['total'], hugepages_in_use()
    root = lab_root()
    inventory = tmp_path / 'inventory.yml'
    inventory.write_text(
        'all:\n  children:\n    hypervisors:\n      hosts:\n        localhost:\n'
        '          ansible_connection: local\n          ansible_python_interpreter: %s\n' % sys.executable)
    groups = tmp_path / 'groups.yml'
    groups.write_text(
        'ivshmem_fleet_runtime_dir: %s\n'
        'ivshmem_fleet_tls_dir: {0}/tls\n'
        'ivshmem_fleet_pki_dir: {0}/pki\n'
        'ivshmem_fleet_groups:\n'
        '  - {name: pbg, host: localhost, size: 4M, vectors: 2, hugepages: 2M,\n'
        '     server: {shm_name: pbg-%s},\n'
        '     master: {name: pbg-master, memory: 32M, accel: tcg, hugepages: 2M},\n'
        '     peers: [{name: pbg-peer1, memory: 32M, accel: tcg}]}\n'
        '  - {name: pbp, host: localhost, type: plain, size: 4M, region: {shm_name: pbp-%s},\n'
        '     master: {name: pbp-master, memory: 32M, accel: tcg},\n'
        '     peers: [{name: pbp-peer1, memory: 32M, accel: tcg}]}\n'.replace('{0}', root) % (
            root, os.path.basename(root), os.path.basename(root)))
    args = ['-i', str(inventory), '-e', '@%s' % groups, os.path.join(REPO, 'playbooks', 'deploy.yml')]
    try:
        assert run_playbook(args + ['--check'], root) > 0
        assert not os.path.exists(os.path.join(root, 'servers'))
        assert not os.path.exists('/dev/shm/pbp-%s' % os.path.basename(root))
        assert _hugepages.pools()['2M']['total'] == pool_before
        assert run_playbook(args, root) > 0
        # 2 pages of server memory and 16 of the master's RAM: the pool holds them, and they are taken.
        assert _hugepages.pools()['2M']['total'] >= 18 and hugepages_in_use() - used_before == 18
        memory = os.path.join(root, 'hugepages-2M', 'pbg-%s' % os.path.basename(root))
        assert os.path.exists(memory) and _hugepages.mount_of(os.path.dirname(memory))[0] == 'hugetlbfs'
        # The plain group's two guests share its region, each under its own account.
        assert stat.S_IMODE(os.stat('/dev/shm/pbp-%s' % os.path.basename(root)).st_mode) == 0o660
        assert sorted(grp.getgrnam('ivm-pbp').gr_mem) == ['ivg-pbp-master', 'ivg-pbp-peer1']
        assert not _tls.missing(os.path.join(root, 'tls'))
        assert run_playbook(args + ['--check'], root) == 0
        assert run_playbook(args, root) == 0
    finally:
        for guest in ('pbg-master', 'pbg-peer1', 'pbp-master', 'pbp-peer1'):
            subprocess.run(['pkill', '-f', os.path.join(root, 'guests', guest, 'qmp.sock')], check=False)
        subprocess.run(['pkill', '-f', os.path.join(root, 'servers', 'pbg', 'ivshmem.sock')], check=False)
        if os.path.exists('/dev/shm/pbp-%s' % os.path.basename(root)):
            os.unlink('/dev/shm/pbp-%s' % os.path.basename(root))
        subprocess.run(['groupdel', 'ivm-pbp'], check=False)
        unmount_hugetlbfs(os.path.join(root, 'hugepages-2M'))


def test_migrate_playbook_resolves_an_interrupted_move_then_converges(tmp_path):
    """Two inventory hosts on this machine (local connections, own runtime directories and memory
    files). A move killed after verification leaves the group in between; the migrate playbook,
    run as an operator would, resolves and moves it; then it reports no change, and check mode
    predicts a move back without making it."""
    import uuid
    from move_lab import TwoHosts
    from test_group_move import assert_whole_on, run_killed_at, sha1_of

    hosts = TwoHosts(lab_root(), uuid.uuid4().hex[:6])
    try:
        hosts.deploy('a')
        with open(hosts.memory('a'), 'r+b') as handle:
            handle.write(os.urandom(4 << 20))
        hosts.digest = sha1_of(hosts.memory('a'))
        run_killed_at(hosts, 'mark:a', 0.0, {'relay_checksums': True})
        assert hosts.where('a')['g-master'] == 'migrated' and hosts.journal('a')['step'] in ('sent', 'committing')
        inventory, groups = two_host_inventory(tmp_path, hosts)
        args = ['-i', str(inventory), '-e', '@%s' % groups, '-e', 'group=g', '-e', 'to=b',
                os.path.join(REPO, 'playbooks', 'migrate.yml')]
        output = run_playbook_output(args)
        assert 'rolled back to a' in output and 'master out' in output, output[-3000:]
        assert_whole_on(hosts, 'b')
        assert recap_changed(run_playbook_output(args)) == 0
        back = [a if a != 'to=b' else 'to=a' for a in args]
        assert recap_changed(run_playbook_output(back + ['--check'])) > 0
        assert_whole_on(hosts, 'b')
    finally:
        hosts.teardown()


def two_host_inventory(tmp_path, hosts):
    """(inventory file, group variables file) for the two local 'hosts' of ``hosts`` (TwoHosts):
    each its own runtime directory, TLS credentials, server and guest overrides."""
    inventory = tmp_path / 'inventory.yml'
    lines = ['all:', '  children:', '    hypervisors:', '      hosts:']
    for name in ('a', 'b'):
        lines += ['        %s:' % name, '          ansible_connection: local',
                  '          ansible_python_interpreter: %s' % sys.executable,
                  '          ivshmem_fleet_runtime_dir: %s' % hosts.layouts[name].runtime_dir,
                  '          ivshmem_fleet_migration_address: 127.0.0.1',
                  '          ivshmem_fleet_tls_dir: %s' % hosts.tls_dirs()[name],
                  '          ivshmem_fleet_server_overrides: %s' % json.dumps(hosts.overrides(name)),
                  '          ivshmem_fleet_guest_overrides: %s' % json.dumps(hosts.guest_overrides(name))]
    inventory.write_text('\n'.join(lines) + '\n')
    group = dict((k, hosts.group[k]) for k in ('name', 'host', 'size', 'vectors', 'master', 'peers', 'migration_port'))
    group['master'] = dict((k, v) for k, v in group['master'].items() if k != 'ivshmem')
    group['peers'] = [dict((k, v) for k, v in p.items() if k != 'ivshmem') for p in group['peers']]
    groups = tmp_path / 'groups.json'
    groups.write_text(json.dumps({'ivshmem_fleet_groups': [group]}))
    return inventory, groups


def run_playbook_output(args):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections'),
               ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0')
    bin_dir = os.path.dirname(sys.executable)
    result = subprocess.run([os.path.join(bin_dir, 'ansible-playbook')] + args, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=600, check=False)
    output = result.stdout.decode('utf-8', 'replace')
    assert result.returncode == 0, output[-6000:]
    return output


def recap_changed(output):
    return sum(int(n) for n in re.findall(r'^\S+\s+: ok=\d+\s+changed=(\d+)', output, re.M))


def rollout_placements(tmp_path, *extra):
    """ivshmem.fleet.rollout in check mode with --tags plan on five local 'hosts' (own runtime
    directories, nothing deployed): the assignment each batch's plan step printed, in order."""
    lines = ['all:', '  children:', '    hypervisors:', '      hosts:']
    for name in ('hv1', 'hv2', 'hv3', 's1', 's2'):
        lines += ['        %s:' % name, '          ansible_connection: local',
                  '          ansible_python_interpreter: %s' % sys.executable,
                  '          ivshmem_fleet_runtime_dir: %s' % (tmp_path / name)]
    inventory = tmp_path / 'inventory.yml'
    inventory.write_text('\n'.join(lines) + '\n')

    def group(name, host, peers):
        return {'name': name, 'host': host, 'size': '4M', 'master': {'name': name + '-m', 'memory': '32M'},
                'peers': [{'name': '%s-p%d' % (name, i), 'memory': '32M'} for i in range(peers)]}
    # Needs with the defaults (64M per QEMU): a and c 196 MiB, b and d 100 MiB.
    groups = tmp_path / 'groups.json'
    groups.write_text(json.dumps({
        'ivshmem_fleet_groups': [group('a', 'hv1', 1), group('b', 'hv1', 0), group('c', 'hv2', 1), group('d', 'hv3', 0)],
        'ivshmem_fleet_rollout_capacity': {'hv1': '100M', 'hv2': '100M', 'hv3': '400M', 's1': '300M', 's2': '200M'}}))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections'),
               ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0')
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', str(inventory), '-e', '@%s' % groups,
         '-e', 'rollout_id=placement-test-%s' % os.getpid(), '--check', '--tags', 'plan'] + list(extra) +
        [os.path.join(REPO, 'playbooks', 'rollout.yml')],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300, check=False)
    output = result.stdout.decode('utf-8', 'replace')
    placements = []
    for block in output.split("TASK [The batch's placement]")[1:]:
        text = block[block.index('=> {'):]
        placements.append(json.loads(text[3:text.index('\n}\n') + 2])['msg'])
    return result.returncode, output, placements


def test_rollout_plan_places_batches_on_several_spares_in_check_mode(tmp_path):
    code, output, placements = rollout_placements(tmp_path, '-e', 'spares=s1,s2', '-e', 'rollout_serial=2')
    assert code == 0, output[-4000:]
    # Batch hv1+hv2: a (196 MiB) on s1, c on s2 (s1 has 104 left), b (100) on s1; then d alone.
    assert placements == [{'a': 's1', 'b': 's1', 'c': 's2'}, {'d': 's1'}], output[-4000:]
    assert 'changed=0' in output and 'changed=1' not in output


def test_rollout_plan_single_spare_and_any_host(tmp_path):
    code, output, placements = rollout_placements(tmp_path, '-e', 'spare=s1')
    assert code == 0, output[-4000:]
    assert placements == [{'a': 's1', 'b': 's1'}, {'c': 's1'}, {'d': 's1'}, {}], output[-4000:]
    code, output, placements = rollout_placements(tmp_path, '-e', 'rollout_destinations=any', '-e', 'rollout_serial=2')
    assert code == 0, output[-4000:]
    # Every host changes, two at a time, its groups on the hosts outside the batch with the most room
    # (capped: hv1 and hv2 100M, hv3 400M, s1 300M, s2 200M).
    assert placements == [{'a': 'hv3', 'b': 'hv3', 'c': 's1'}, {'d': 's2'}, {}], output[-4000:]


def test_rollout_plan_names_a_group_that_fits_nowhere_before_anything_moves(tmp_path):
    code, output, placements = rollout_placements(tmp_path, '-e', 'spares=s2', '-e', 'rollout_guest_overhead=128M')
    assert code != 0 and placements == []
    assert 'groups[a]: needs 324 MiB' in output and '124 MiB short' in output, output[-4000:]


def test_plan_runs_on_the_controller_without_reaching_its_host(tmp_path):
    """ivshmem.fleet.plan is pure logic, run by its action plugin on the controller: a task on a
    host nothing listens for still plans, and a bad group still fails naming its field (as a
    module it failed unreachable, each remote call costing seconds on the lab)."""
    group = {'name': 'g1', 'host': 'hv2', 'size': '16M', 'master': {'name': 'g1-m'}, 'peers': [{'name': 'g1-p1'}]}
    tasks = [
        {'ivshmem.fleet.plan': {'groups': [group], 'hosts': ['hv1', 'hv2']}, 'register': 'planned'},
        {'ansible.builtin.assert': {'that': [
            'planned.by_host == {"hv1": [], "hv2": ["g1"]}', 'planned.groups[0].server.pins == {"g1-m": 0, "g1-p1": 1}']},
         'delegate_to': 'localhost'},
        {'ivshmem.fleet.plan': {'groups': [dict(group, host='nowhere')], 'hosts': ['hv1']},
         'register': 'refused', 'ignore_errors': True},
        {'ansible.builtin.assert': {'that': ['refused.failed', 'refused.field == "groups[g1].host"']},
         'delegate_to': 'localhost'},
    ]
    playbook = tmp_path / 'plan.yml'
    playbook.write_text(json.dumps([{'hosts': 'all', 'gather_facts': False, 'tasks': tasks}]))
    output = run_playbook_output(['-i', 'hv1,', '-e', 'ansible_connection=ssh', '-e', 'ansible_host=127.0.0.1',
                                  '-e', 'ansible_port=9', '-e', 'ansible_python_interpreter=%s' % sys.executable,
                                  str(playbook)])
    assert re.search(r'^hv1\s+: ok=4 .* unreachable=0 .* ignored=1', output, re.M), output[-3000:]


def test_migrate_playbook_moves_a_group_to_a_host_on_another_qemu_and_the_summary_proves_it(tmp_path, qemu_backports):
    """Host b's QEMU is 10.0 (the host variable ivshmem_fleet_guest_overrides gives its binary):
    the migrate playbook moves a 7.2 group there keeping pc-i440fx-7.2; the summary playbook shows
    each guest's machine type and the memory checksum beside the one written before the move, and
    fails where they differ."""
    import hashlib
    import uuid
    from move_lab import TwoHosts
    from test_group_move import assert_whole_on, sha1_of

    hosts = TwoHosts(lab_root(), uuid.uuid4().hex[:6], binaries={'b': qemu_backports})
    try:
        hosts.deploy('a')
        with open(hosts.memory('a'), 'r+b') as handle:
            handle.write(os.urandom(4 << 20))
        hosts.digest = sha1_of(hosts.memory('a'))
        inventory, groups = two_host_inventory(tmp_path, hosts)
        common = ['-i', str(inventory), '-e', '@%s' % groups]
        output = run_playbook_output(common + ['-e', 'group=g', '-e', 'to=b', os.path.join(REPO, 'playbooks', 'migrate.yml')])
        assert 'moved a -> b' in output, output[-3000:]
        assert_whole_on(hosts, 'b')
        from ansible_collections.ivshmem.fleet.plugins.module_utils._guest import guest_status
        for guest in ('g-master', 'g-peer1', 'g-peer2'):
            status = guest_status(hosts.layouts['b'], guest)
            assert (status['record']['argv'][0], status['machine_type']) == (qemu_backports, 'pc-i440fx-7.2'), guest
        summary = common + ['-e', json.dumps({'summary_written': {'g': hosts.digest}}),
                            os.path.join(REPO, 'playbooks', 'summary.yml')]
        output = run_playbook_output(summary)
        # (Both 'hosts' are this machine: each reports its distribution QEMU, 7.2.)
        assert 'a: QEMU 7.2.' in output, output[-3000:]
        assert 'g-master running: master of server g, ID 0, machine type pc-i440fx-7.2' in output, output[-3000:]
        assert 'written before the first move %s: equal' % hosts.digest in output, output[-3000:]
        wrong = hashlib.sha1(b'not the pattern').hexdigest()
        with pytest.raises(AssertionError) as info:
            run_playbook_output(summary[:-1] + ['-e', json.dumps({'summary_written': {'g': wrong}}), summary[-1]])
        assert '%s: DIFFERENT' % wrong in str(info.value)
    finally:
        hosts.teardown()
