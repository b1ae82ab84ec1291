"""The modules driven through ansible-playbook against localhost (tests/playbooks/*.yml assert
check mode, a real run and an unchanged second run)."""
import os
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
