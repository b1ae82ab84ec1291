"""The lab guests' kernel: a multiboot image that leaves the guest halted, answering only PCI hotplug.

    idle_guest.py PATH            write the image to PATH (build-image.sh puts it in the lab image)
    idle_guest.py --deaf PATH     the same without the hotplug answer (a guest that ignores unplugs)

The lab's guests carry no OS (a Linux guest two levels of TCG down is too slow). Left in
SeaBIOS after "No bootable device", a guest still takes the PIT's 18.2 Hz interrupt: about 1 %
of a core here for each QEMU, and far more on a lab host, where the guests' QEMUs run under TCG
themselves. Measured on a lab host (2026-12-04): with nine guests in SeaBIOS its one vCPU was 17 %
idle and three python3 starts took 4.9 s; with nine on this kernel, 98 % idle and 2.8 s, as with
no guests at all (98 %, 3.0 s). SeaBIOS still runs first (it assigns the PCI BARs, which
IVPOSITION is read through), then boots this image, which stops the PIT, masks every interrupt
but the ACPI SCI and halts: QEMU then has nothing to do for the guest until a device is unplugged.

A peer moved live has its ivshmem device unplugged and plugged back (_hotplug.py), which needs
the guest to do what an OS's ACPI code does on a pc (i440fx) machine: on the SCI, clear the GPE
status, eject the slots QEMU asks to remove (PCI hotplug registers at 0xae00), and give a device
plugged back the BARs SeaBIOS gave the one in its slot at boot (saved then, restored now), so
that IVPOSITION reads again. q35 guests get no answer. Standard library only.
"""
import struct
import sys

PATH = '/usr/local/share/ivshmem-fleet-lab/idle-guest.bin'
LOAD_ADDRESS = 0x100000
HEADER_SIZE = 32
MAGIC = 0x1BADB002
FLAGS = 0x00010000  # the addresses below say where to load the image: no ELF needed
# Where things lie in the image (offsets from LOAD_ADDRESS); the file covers all of them.
IDT, IDT_VECTORS = 0x200, 0x2a   # the SCI (IRQ 9) at vector 0x29: PICs moved to 0x20 and 0x28
IDTR = 0x350
SAVED = 0x400                    # 32 slots x 7 dwords: BAR0-BAR5 and command, read at boot
SAVED_SLOT = 28
STACK_TOP = 0xa00                # the image's size: the stack lies in it
SCI_VECTOR = 0x29


def _abs(offset):
    return struct.pack('<I', LOAD_ADDRESS + offset)


# (label, bytes, what they do); the handler's address goes into the IDT gate, found by label.
_BOOT = [
    (None, b'\xfa', 'cli'),
    (None, b'\xbc' + _abs(STACK_TOP), 'mov esp, STACK_TOP    (multiboot leaves esp undefined)'),
    (None, b'\xfc', 'cld'),
    (None, b'\xb0\x11\xe6\x20\xe6\xa0', 'ICW1 to both PICs: initialise'),
    (None, b'\xb0\x20\xe6\x21\xb0\x28\xe6\xa1', 'ICW2: IRQ 0-7 at vector 0x20, IRQ 8-15 at 0x28'),
    (None, b'\xb0\x04\xe6\x21\xb0\x02\xe6\xa1', 'ICW3: the slave on IRQ 2'),
    (None, b'\xb0\x01\xe6\x21\xe6\xa1', 'ICW4: 8086 mode'),
    (None, b'\xb0\xff\xe6\x21\xe6\xa1', 'every IRQ masked, for now'),
    (None, b'\xb0\x30\xe6\x43', 'PIT channel 0 in mode 0: one shot, no periodic timer'),
    (None, b'\xb0\x01\xe6\x40\x30\xc0\xe6\x40', 'count 1'),
    ('answer', b'\x66\x8c\xc8', 'mov ax, cs            (the deaf image halts here instead)'),
    (None, b'\x66\xa3' + _abs(IDT + SCI_VECTOR * 8 + 2), 'the gate\'s selector is the code segment multiboot gave'),
    (None, b'\x0f\x01\x1d' + _abs(IDTR), 'lidt'),
    (None, b'\xbf' + _abs(SAVED), 'mov edi, SAVED'),
    (None, b'\x31\xdb', 'xor ebx, ebx          slot 0'),
    ('save_slot', b'\xb9\x10\x00\x00\x00', 'mov ecx, 0x10         BAR0'),
    ('save_bar', b'\xe8\x2d\x00\x00\x00', 'call config_read'),
    (None, b'\xab', 'stosd'),
    (None, b'\x83\xc1\x04\x83\xf9\x28\x72\xf2', 'next BAR up to BAR5'),
    (None, b'\xb9\x04\x00\x00\x00', 'mov ecx, 4            command'),
    (None, b'\xe8\x1a\x00\x00\x00', 'call config_read'),
    (None, b'\xab', 'stosd'),
    (None, b'\x43\x83\xfb\x20\x72\xdc', 'next slot up to 31'),
    (None, b'\x66\xba\xe2\xaf\xb0\x02\xee', 'GPE0 enable: bit 1, PCI hotplug'),
    (None, b'\xb0\xfb\xe6\x21', 'master PIC: only the cascade unmasked'),
    (None, b'\xb0\xfd\xe6\xa1', 'slave PIC: only IRQ 9, the SCI'),
    (None, b'\xfb', 'sti'),
    ('idle', b'\xf4', 'hlt'),
    (None, b'\xeb\xfd', 'jmp back to hlt'),
    ('config_read', b'\x89\xd8\xc1\xe0\x0b\x09\xc8\x0d\x00\x00\x00\x80',
     'eax = 0x80000000 | slot << 11 | register'),
    (None, b'\x66\xba\xf8\x0c\xef', 'out 0xcf8, eax'),
    (None, b'\x66\xba\xfc\x0c\xed\xc3', 'in eax, 0xcfc; ret (dx stays 0xcfc)'),
    ('handler', b'\x60', 'pusha'),
    ('again', b'\x66\xba\xe0\xaf\xec', 'GPE0 status'),
    (None, b'\x84\xc0\x74\x5d', 'none left: to done'),
    (None, b'\xee', 'write back: clears them'),
    (None, b'\x66\xba\x04\xae\xed', 'in eax, 0xae04       PCDN: slots to remove'),
    ('eject', b'\x0f\xbc\xd8\x74\x11', 'bsf ebx, eax; none left: to plugged'),
    (None, b'\x0f\xb3\xd8\x31\xc9\x0f\xab\xd9', 'ecx = that slot\'s bit, cleared in eax'),
    (None, b'\x91\x66\xba\x08\xae\xef\x91', 'out 0xae08, bit       PCEJ: QEMU removes the device'),
    (None, b'\xeb\xea', 'jmp eject'),
    ('plugged', b'\x66\xba\x00\xae\xed', 'in eax, 0xae00       PCIU: slots plugged'),
    ('restore_next', b'\x0f\xbc\xd8\x74\xd1', 'bsf ebx, eax; none left: to again'),
    (None, b'\x0f\xb3\xd8\x50', 'clear it in eax, push eax'),
    (None, b'\x6b\xf3\x1c\x81\xc6' + _abs(SAVED), 'esi = SAVED + slot * 28'),
    (None, b'\x83\x7e\x18\xff\x74\x21', 'empty at boot (command reads all ones): to restored'),
    (None, b'\xb9\x10\x00\x00\x00', 'mov ecx, 0x10'),
    ('restore_bar', b'\xe8\x9c\xff\xff\xff\xad\xef', 'config_read selects it; lodsd; out dx, eax'),
    (None, b'\x83\xc1\x04\x83\xf9\x28\x72\xf1', 'next BAR up to BAR5'),
    (None, b'\xb9\x04\x00\x00\x00\xe8\x88\xff\xff\xff', 'select the command register'),
    (None, b'\xad\x66\xef', 'lodsd; out dx, ax     decoding on again'),
    ('restored', b'\x58\xeb\xc4', 'pop eax; jmp restore_next'),
    ('done', b'\xb0\x20\xe6\xa0\xe6\x20', 'end of interrupt to both PICs'),
    (None, b'\x61\xcf', 'popa; iret'),
]
# The one-line variant kept for the deaf image: halted with every interrupt masked.
_DEAF_TAIL = [('idle', b'\xf4', 'hlt'), (None, b'\xeb\xfd', 'jmp back to hlt')]


def _code(deaf):
    lines = _BOOT[:[l[0] for l in _BOOT].index('answer')] + _DEAF_TAIL if deaf else _BOOT
    code, labels = b'', {}
    for label, data, _comment in lines:
        if label:
            labels[label] = HEADER_SIZE + len(code)
        code += data
    return code, labels


def image(deaf=False):
    """The image; ``deaf`` leaves out the hotplug answer (nothing acknowledges an unplug)."""
    checksum = -(MAGIC + FLAGS) & 0xffffffff
    # header_addr, load_addr, load_end_addr (0: the whole file), bss_end_addr (0: none), entry_addr
    header = struct.pack('<8I', MAGIC, FLAGS, checksum, LOAD_ADDRESS, LOAD_ADDRESS, 0, 0,
                         LOAD_ADDRESS + HEADER_SIZE)
    code, labels = _code(deaf)
    data = bytearray(STACK_TOP)
    data[:HEADER_SIZE + len(code)] = header + code
    assert HEADER_SIZE + len(code) <= IDT
    if not deaf:
        handler = LOAD_ADDRESS + labels['handler']
        # An interrupt gate: offset, selector (set at boot), 0x8e: present, ring 0, 32-bit.
        data[IDT + SCI_VECTOR * 8:IDT + SCI_VECTOR * 8 + 8] = struct.pack(
            '<HHBBH', handler & 0xffff, 0, 0, 0x8e, handler >> 16)
        data[IDTR:IDTR + 6] = struct.pack('<HI', IDT_VECTORS * 8 - 1, LOAD_ADDRESS + IDT)
    return bytes(data)


def idle_loop(deaf=False):
    """The addresses of the halt loop's two instructions: where a guest that booted this image rests."""
    idle = LOAD_ADDRESS + _code(deaf)[1]['idle']
    return (idle, idle + 1)


def guest(name):
    """A lab guest as the lab's groups declare it (playbooks/vars/lab_groups.yml, molecule/)."""
    return {'name': name, 'memory': '32M', 'accel': 'tcg', 'kernel': PATH}


def main():
    args = sys.argv[1:]
    deaf = args[:1] == ['--deaf']
    with open(args[-1], 'wb') as handle:
        handle.write(image(deaf=deaf))


if __name__ == '__main__':
    main()
