"""The lab guests' kernel (tests/lab/idle_guest.py) in real QEMU: the guest ends halted with every
interrupt masked, so its QEMU has nothing to run, while SeaBIOS, which ran first, has assigned the
BARs that IVPOSITION is read through."""
import re

from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPClient

from qtest_guest import monitor, wait_until_idle


def _guest_started(lab, **params):
    lab.server('s', vectors=2)
    lab.guest('g', 's', role='master', **params)
    status = lab.status('g')
    assert status['state'] == 'running', status
    return status


def test_the_idle_kernel_halts_the_guest_with_every_interrupt_masked_after_seabios_set_the_bars(builtin_lab):
    status = _guest_started(builtin_lab, kernel=builtin_lab.idle_kernel())
    assert status['ivshmem'][0]['ivposition'] == 0  # BAR0 assigned by SeaBIOS: IVPOSITION readable
    with QMPClient(status['qmp'], timeout=10) as qmp:
        wait_until_idle(qmp)
        # Both PICs mask every line: the guest takes no timer interrupt.
        masks = re.findall(r'imr=([0-9a-f]+)', monitor(qmp, 'info pic'))
        assert masks and all(int(mask, 16) == 0xff for mask in masks), masks
