"""The lab guests' kernel: a multiboot image whose only code leaves the guest halted for good.

    idle_guest.py PATH    write the image to PATH (build-image.sh puts it in the lab image)

The lab's guests carry no OS (a Linux guest two levels of TCG down is too slow). Left in
SeaBIOS after "No bootable device", a guest still takes the PIT's 18.2 Hz interrupt: about 1 %
of a core here for each QEMU, and far more on a lab host, where the guests' QEMUs run under TCG
themselves. Measured on a lab host (2026-12-04): with nine guests in SeaBIOS its one vCPU was 17 %
idle and three python3 starts took 4.9 s; with nine on this kernel, 98 % idle and 2.8 s, as with
no guests at all (98 %, 3.0 s). SeaBIOS still runs first (it assigns the PCI BARs, which
IVPOSITION is read through), then boots this image, which masks every interrupt, makes the PIT
one-shot and halts: QEMU then has nothing to do for the guest. Standard library only.
"""
import struct
import sys

PATH = '/usr/local/share/ivshmem-fleet-lab/idle-guest.bin'
LOAD_ADDRESS = 0x100000
HEADER_SIZE = 32
MAGIC = 0x1BADB002
FLAGS = 0x00010000  # the addresses below say where to load the image: no ELF needed

CODE = bytes([
    0xfa,              # cli
    0xb0, 0xff,        # mov al, 0xff
    0xe6, 0x21,        # out 0x21, al     every IRQ masked at the master PIC
    0xe6, 0xa1,        # out 0xa1, al     and at the slave
    0xb0, 0x30,        # mov al, 0x30
    0xe6, 0x43,        # out 0x43, al     PIT channel 0 in mode 0: one shot, no periodic timer
    0xb0, 0x01,        # mov al, 1
    0xe6, 0x40,        # out 0x40, al     count 1 (low byte)
    0x30, 0xc0,        # xor al, al
    0xe6, 0x40,        # out 0x40, al     (high byte)
    0xf4,              # hlt
    0xeb, 0xfd,        # jmp back to hlt
])


def image():
    checksum = -(MAGIC + FLAGS) & 0xffffffff
    # header_addr, load_addr, load_end_addr (0: the whole file), bss_end_addr (0: none), entry_addr
    header = struct.pack('<8I', MAGIC, FLAGS, checksum, LOAD_ADDRESS, LOAD_ADDRESS, 0, 0,
                         LOAD_ADDRESS + HEADER_SIZE)
    return header + CODE


def guest(name):
    """A lab guest as the lab's groups declare it (playbooks/vars/lab_groups.yml, molecule/)."""
    return {'name': name, 'memory': '32M', 'accel': 'tcg', 'kernel': PATH}


def main():
    with open(sys.argv[1], 'wb') as handle:
        handle.write(image())


if __name__ == '__main__':
    main()
