"""Machine types: what an alias stands for, what a QEMU binary offers (pure parsing, no QEMU)."""
import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._model import (
    machine_from_qom, pinned_machine, same_machine)
from ansible_collections.ivshmem.fleet.plugins.module_utils._qemu_binary import (
    QemuBinaryError, check_guest, parse_machines, parse_version, versioned_range)

HELP_10 = """Supported machines are:
microvm              microvm (i386)
pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996)
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-10.0)
pc-i440fx-10.0       Standard PC (i440FX + PIIX, 1996) (default)
pc-i440fx-9.2        Standard PC (i440FX + PIIX, 1996)
pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-10.0)
pc-q35-10.0          Standard PC (Q35 + ICH9, 2009)
none                 empty machine
"""


def caps(**extra):
    return dict(parse_machines(HELP_10), binary='/usr/bin/qemu-system-x86_64', present=True, version='10.0.2',
                devices=['ivshmem-doorbell', 'ivshmem-plain'], **extra)


def test_machine_help_gives_types_aliases_and_the_default():
    parsed = parse_machines(HELP_10)
    assert parsed['aliases'] == {'pc': 'pc-i440fx-10.0', 'q35': 'pc-q35-10.0'}
    assert parsed['default'] == 'pc-i440fx-10.0'
    assert 'pc' not in parsed['machines'] and 'pc-i440fx-7.2' in parsed['machines'] and 'none' in parsed['machines']


def test_version_and_package():
    assert parse_version('QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright') == (
        '7.2.22', 'Debian 1:7.2+dfsg-7+deb12u18+b3')
    assert parse_version('QEMU emulator version 10.0.2\n') == ('10.0.2', None)
    assert parse_version('bash: no such thing') == (None, None)


def test_the_versioned_range_is_ordered_by_version_not_by_text():
    assert versioned_range(caps(), 'pc') == 'pc-i440fx-7.2 .. 10.0'
    assert versioned_range(caps(), 'pc-q35-11.0') == 'pc-q35-7.2 .. 10.0'
    assert versioned_range(caps(), 'microvm') is None


def test_qom_types_and_pinning_keep_options():
    assert machine_from_qom('pc-i440fx-7.2-machine') == 'pc-i440fx-7.2'
    assert machine_from_qom(None) is None and machine_from_qom('weird') is None
    assert pinned_machine('q35,smm=off', 'pc-q35-7.2') == 'pc-q35-7.2,smm=off'
    assert pinned_machine('pc', None) == 'pc'


@pytest.mark.parametrize('asked, recorded, resolved, same', [
    ('pc', 'pc', 'pc-i440fx-7.2', True),
    ('pc-i440fx-7.2', 'pc', 'pc-i440fx-7.2', True),   # the type the alias resolved to
    ('pc', 'pc-i440fx-7.2', 'pc-i440fx-7.2', True),   # and back
    ('pc-i440fx-10.0', 'pc', 'pc-i440fx-7.2', False),  # an explicit other version
    ('q35', 'pc', 'pc-i440fx-7.2', False),            # another family
    ('pc,smm=off', 'pc', 'pc-i440fx-7.2', False),     # other options
    ('pc-i440fx-7.2', 'pc', None, False),             # unknown resolution: only equal text is equal
])
def test_an_alias_and_the_type_it_resolved_to_are_the_same_machine(asked, recorded, resolved, same):
    assert same_machine(asked, recorded, resolved) is same


def test_a_guest_is_refused_by_the_option_its_qemu_cannot_run():
    check_guest(caps(), 'pc-i440fx-7.2,smm=off', ['ivshmem-doorbell'])
    with pytest.raises(QemuBinaryError) as info:
        check_guest(caps(), 'pc-i440fx-11.0', ['ivshmem-doorbell'], 'hv2')
    assert info.value.field == 'machine'
    assert str(info.value) == ('machine: QEMU 10.0.2 at /usr/bin/qemu-system-x86_64 on hv2 does not offer machine type '
                               'pc-i440fx-11.0 (it runs pc-i440fx-7.2 .. 10.0: a QEMU runs the versioned types of its '
                               'own version and older)')
    with pytest.raises(QemuBinaryError) as info:
        check_guest(dict(caps(), devices=[]), 'pc', ['ivshmem-plain'])
    assert info.value.field == 'ivshmem' and 'no ivshmem-plain device' in str(info.value)
    with pytest.raises(QemuBinaryError) as info:
        check_guest({'binary': '/opt/q', 'present': False}, 'pc', [])
    assert str(info.value) == 'binary: no QEMU at /opt/q'


@pytest.mark.parametrize('said, repeats', [
    ("qemu-system-x86_64: Machine type received is 'pc-i440fx-10.0' and local is 'pc-i440fx-7.2' | "
     "qemu-system-x86_64: load of migration failed: Invalid argument", True),
    # The lab's link-cut fault (Molecule faults scenario): a cut stream, retried.
    ('qemu-system-x86_64: error while loading state section id 2(ram) | qemu-system-x86_64: load of migration '
     'failed: Input/output error', False),
    ('', False),
])
def test_only_a_refusal_the_same_stream_meets_again_is_not_retried(said, repeats):
    from ansible_collections.ivshmem.fleet.plugins.module_utils._migration import refusal_repeats
    assert refusal_repeats(said) is repeats
