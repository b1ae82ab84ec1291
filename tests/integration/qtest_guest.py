"""Guests without an OS whose CPU a test drives through QEMU's qtest socket: doorbells and MSI-X."""
import os
import re
import socket

from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPClient
from ansible_collections.ivshmem.fleet.plugins.module_utils._vm import read_ivshmem_registers
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import wait_for

from idle_guest import idle_loop


class QTest:
    """A guest's CPU-side accesses (port I/O, MMIO) through QEMU's qtest socket, no guest OS."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.replies = self.sock.makefile('rb')

    def __call__(self, line):
        self.sock.sendall(line.encode() + b'\n')
        reply = self.replies.readline().decode().split()
        assert reply and reply[0] == 'OK', 'qtest %r: %r' % (line, reply)
        return int(reply[1], 16) if len(reply) > 1 else None

    def config(self, pci, register, value=None):
        """Read or write a dword of the device's PCI config space (mechanism #1: 0xcf8/0xcfc)."""
        self('outl 0xcf8 0x%x' % (0x80000000 | pci['bus'] << 16 | pci['slot'] << 11 | pci['function'] << 8 | register))
        if value is None:
            return self('inl 0xcfc')
        return self('outl 0xcfc 0x%x' % value)

    def close(self):
        self.replies.close()
        self.sock.close()


def monitor(qmp, command):
    return qmp.command('human-monitor-command', {'command-line': command})


def wait_until_idle(qmp):
    """Wait for the lab's idle kernel to halt the vCPU in its idle loop: SeaBIOS has finished."""
    def halted():
        registers = monitor(qmp, 'info registers')
        return 'HLT=1' in registers and int(re.search(r'EIP=([0-9a-f]+)', registers).group(1), 16) in idle_loop()
    return wait_for('the guest halted in the idle kernel', halted, timeout=20)


def guest_driven_by_qtest(lab, name, server, role, vectors=2):
    """A guest whose CPU the test drives: (its QTest, its ivshmem0 BAR0 address).

    The guest boots the lab's idle kernel and the test waits for it to halt: SeaBIOS, still
    running, would otherwise interleave its own PCI config accesses (0xcf8/0xcfc) with the
    test's."""
    path = os.path.join(lab.layout.guest_dir(name), 'qtest.sock')
    lab.guest(name, server, role=role, vectors=vectors, kernel=lab.idle_kernel(),
              extra_args=['-qtest', 'unix:%s,server=on,wait=off' % path])
    with QMPClient(lab.layout.guest_qmp(name)) as qmp:
        wait_until_idle(qmp)
        bar0 = read_ivshmem_registers(qmp)['ivshmem0']['bar0']
    return QTest(path), bar0


def ring(qtest, bar0, peer_id, vector):
    # DOORBELL (BAR0 + 12) = peer ID << 16 | vector, written by the ringing guest's device.
    qtest('writel 0x%x 0x%x' % (bar0 + 12, peer_id << 16 | vector))


def msix_pending_bits_address(qtest, qmp):
    """Enable the ivshmem device's MSI-X with every vector masked (its reset state), as a driver
    would before unmasking. A doorbell then sets its vector's bit in the Pending Bit Array,
    the receiving device's own record of the interrupt. Returns the PBA's address."""
    pci = [dict(device, bus=bus['bus']) for bus in qmp.command('query-pci') for device in bus['devices']
           if device.get('qdev_id') == 'ivshmem0'][0]
    bars = dict((region['bar'], region['address']) for region in pci['regions'])
    capability = qtest.config(pci, 0x34) & 0xfc
    while capability:
        word = qtest.config(pci, capability)
        if word & 0xff == 0x11:  # MSI-X
            qtest.config(pci, capability, word | 1 << 31)  # Message Control: MSI-X Enable
            pba = qtest.config(pci, capability + 8)  # PBA offset | BIR
            return bars[pba & 7] + (pba & ~7)
        capability = word >> 8 & 0xfc
    raise AssertionError('ivshmem device without an MSI-X capability')


def pending(qtest, pba, vector):
    """Whether the vector's bit is set in the device's Pending Bit Array (one bit per vector)."""
    return bool(qtest('readl 0x%x' % (pba + 4 * (vector // 32))) >> (vector % 32) & 1)
