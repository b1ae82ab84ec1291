"""The modules driven through ansible-playbook against localhost (tests/playbooks/*.yml assert
check mode, a real run and an unchanged second run)."""
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, lab_root

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
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections'),
               ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0')
    bin_dir = os.path.dirname(sys.executable)
    result = subprocess.run([os.path.join(bin_dir, 'ansible-playbook')] + args, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=600, check=False)
    output = result.stdout.decode('utf-8', 'replace')
    assert result.returncode == 0, output[-6000:]
    recap = re.search(r'localhost\s+: ok=\d+\s+changed=(\d+)', output)
    return int(recap.group(1))


def test_deploy_playbook_predicts_in_check_mode_and_converges_once(tmp_path):
    """ivshmem.fleet.deploy against localhost as the one hypervisor: check mode predicts and
    changes nothing, the real run deploys, then check mode and a second run report no change."""
    root = lab_root()
    inventory = tmp_path / 'inventory.yml'
    inventory.write_text(
        'all:\n  children:\n    hypervisors:\n      hosts:\n        localhost:\n'
        '          ansible_connection: local\n          ansible_python_interpreter: %s\n' % sys.executable)
    groups = tmp_path / 'groups.yml'
    groups.write_text(
        'ivshmem_fleet_runtime_dir: %s\n'
        'ivshmem_fleet_groups:\n'
        '  - {name: pbg, host: localhost, size: 4M, vectors: 2,\n'
        '     server: {shm_name: pbg-%s},\n'
        '     master: {name: pbg-master, memory: 32M, accel: tcg},\n'
        '     peers: [{name: pbg-peer1, memory: 32M, accel: tcg}]}\n' % (root, os.path.basename(root)))
    args = ['-i', str(inventory), '-e', '@%s' % groups, os.path.join(REPO, 'playbooks', 'deploy.yml')]
    try:
        assert run_playbook(args + ['--check'], root) > 0
        assert not os.path.exists(os.path.join(root, 'servers'))
        assert run_playbook(args, root) > 0
        assert run_playbook(args + ['--check'], root) == 0
        assert run_playbook(args, root) == 0
    finally:
        for guest in ('pbg-master', 'pbg-peer1'):
            subprocess.run(['pkill', '-f', os.path.join(root, 'guests', guest, 'qmp.sock')], check=False)
        subprocess.run(['pkill', '-f', os.path.join(root, 'servers', 'pbg', 'ivshmem.sock')], check=False)
