import os
import re
import shutil
import subprocess

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._supervisor import SystemdSupervisor

ANALYZE = shutil.which('systemd-analyze')


@pytest.mark.skipif(ANALYZE is None, reason='systemd-analyze missing: scripts/bootstrap.sh installs it')
def test_the_server_unit_scores_at_most_2_0_under_systemd_analyze_security(tmp_path):
    supervisor = SystemdSupervisor('g1', '/run/x/servers/g1/server.pid', 'marker', None)
    argv = ['/usr/bin/python3', '/usr/local/lib/ivshmem-fleet/ivshmem-fleet-server.pyz', '-F', '-S',
            '/run/x/servers/g1/ivshmem.sock']
    unit = tmp_path / supervisor.unit
    unit.write_text(supervisor.unit_text(argv, 'ivshmem', 'ivshmem', True, ('/run/x/servers/g1', '/dev/shm')))
    result = subprocess.run([ANALYZE, 'security', '--offline=true', '--no-pager', str(unit)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
                            env=dict(os.environ, SYSTEMD_COLORS='0'))
    score = re.search(r'Overall exposure level for \S+: (\d+\.\d+)', result.stdout.decode())
    assert score, result.stdout.decode()[-2000:]
    assert float(score.group(1)) <= 2.0, result.stdout.decode()
    text = unit.read_text()
    assert 'ReadWritePaths=-/run/x/servers/g1 -/dev/shm' in text and 'CapabilityBoundingSet=\n' in text
