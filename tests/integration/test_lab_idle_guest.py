"""The lab guests' kernel (tests/lab/idle_guest.py) in real QEMU: the guest ends halted with every
interrupt masked, so its QEMU has nothing to run, while SeaBIOS, which ran first, has assigned the
BARs that IVPOSITION is read through."""
import os
import re
import sys

from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPClient
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import wait_for

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'lab'))
import idle_guest  # noqa: E402

IF_FLAG = 1 << 9


def _monitor(qmp, command):
    return qmp.command('human-monitor-command', {'command-line': command})


def _cpu_halted_with_interrupts_off(qmp):
    registers = _monitor(qmp, 'info registers')
    flags = int(re.search(r'EFL=([0-9a-f]+)', registers).group(1), 16)
    return 'HLT=1' in registers and not flags & IF_FLAG


def _guest_started(lab, **params):
    lab.server('s', vectors=2)
    lab.guest('g', 's', role='master', **params)
    status = lab.status('g')
    assert status['state'] == 'running', status
    return status


def test_the_idle_kernel_halts_the_guest_with_every_interrupt_masked_after_seabios_set_the_bars(builtin_lab):
    kernel = os.path.join(builtin_lab.root, 'idle-guest.bin')
    with open(kernel, 'wb') as handle:
        handle.write(idle_guest.image())
    os.chmod(kernel, 0o644)
    status = _guest_started(builtin_lab, kernel=kernel)
    assert status['ivshmem'][0]['ivposition'] == 0  # BAR0 assigned by SeaBIOS: IVPOSITION readable
    with QMPClient(status['qmp'], timeout=10) as qmp:
        wait_for('the guest halted with interrupts off', lambda: _cpu_halted_with_interrupts_off(qmp), timeout=20)
        # Both PICs mask every line: the guest takes no timer interrupt.
        masks = re.findall(r'imr=([0-9a-f]+)', _monitor(qmp, 'info pic'))
        assert masks and all(int(mask, 16) == 0xff for mask in masks), masks
