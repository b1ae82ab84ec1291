"""Migration credentials on a host: installing them and the QMP calls that make QEMU use them
(module_utils/_tls.py), with credentials the controller's CA issues (plugin_utils/_pki.py, tested
in tests/unit/plugins/plugin_utils/test_pki.py). Real QEMU over TLS is in
tests/integration/test_migration_tls.py."""
import os
import stat
import time

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _tls
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._pki import Authority


def issue(directory, host='hv1', names=(), addresses=('192.0.2.1',), keep=True):
    authority = Authority(str(directory))
    with authority.locked():
        authority.load()
        return authority.credentials(host, list(names), list(addresses), keep=keep)


def test_install_writes_once_with_private_keys_and_never_follows_a_link(tmp_path):
    files = issue(tmp_path / 'pki')
    dest = tmp_path / 'tls'
    assert _tls.install(str(dest), files, 'root', check_mode=True) == list(_tls.FILES)
    assert not dest.exists()
    victim = tmp_path / 'victim'
    victim.write_text('keep me')
    dest.mkdir(mode=0o750)
    os.symlink(str(victim), str(dest / 'server-key.pem'))
    assert _tls.install(str(dest), files, 'root', check_mode=False) == list(_tls.FILES)
    assert victim.read_text() == 'keep me'
    assert stat.S_IMODE(os.lstat(dest / 'server-key.pem').st_mode) == 0o600  # root's alone
    assert stat.S_IMODE(os.lstat(dest / 'ca-cert.pem').st_mode) == 0o644
    assert _tls.missing(str(dest)) == []
    assert _tls.install(str(dest), files, 'root', check_mode=False) == []
    assert _tls.remove(str(dest), check_mode=False) == list(_tls.FILES)
    assert _tls.missing(str(dest)) == list(_tls.FILES)


@pytest.mark.parametrize('files, field', [
    ({'ca-cert.pem': 'x'}, 'files'),
    (dict.fromkeys(_tls.FILES + ('../../etc/passwd',), 'x'), 'files'),
])
def test_install_refuses_a_wrong_set_of_files(tmp_path, files, field):
    with pytest.raises(ValidationError) as failed:
        _tls.install(str(tmp_path), files, 'root', check_mode=False)
    assert failed.value.field == field


def test_install_names_a_missing_group(tmp_path):
    with pytest.raises(ValidationError) as failed:
        _tls.install(str(tmp_path), dict.fromkeys(_tls.FILES, 'x'), 'no-such-group-here', check_mode=False)
    assert failed.value.field == 'group'


@pytest.mark.parametrize('value', ['/etc/tls', {'dir': 'relative', 'peer': 'hv2'}, {'dir': '/etc/tls'},
                                   {'dir': '/etc/tls', 'peer': 'a b'}])
def test_settings_are_checked_by_field(value):
    with pytest.raises(ValidationError) as failed:
        _tls.check_settings('tls', value)
    assert failed.value.field.startswith('tls')


class Recorder:
    def __init__(self):
        self.calls = []

    def command(self, name, arguments=None):
        self.calls.append((name, arguments))
        return {}


def installed(tmp_path):
    dest = tmp_path / 'tls'
    _tls.install(str(dest), issue(tmp_path / 'pki'), 'root', check_mode=False)
    return str(dest)


class Loader(Recorder):
    """Records what QEMU would have read when it completes tls-creds-x509."""

    def command(self, name, arguments=None):
        if name == 'object-add' and arguments['qom-type'] == 'tls-creds-x509':
            directory = arguments['dir']
            self.seen = dict((n, (os.stat(os.path.join(directory, n)).st_uid,
                                  stat.S_IMODE(os.stat(os.path.join(directory, n)).st_mode))) for n in _tls.FILES)
            self.directory = directory
        return Recorder.command(self, name, arguments)


def test_the_destination_admits_only_the_expected_source_and_the_source_checks_the_destination(tmp_path):
    destination, source = Loader(), Loader()
    tls = installed(tmp_path)
    _tls.setup_destination(destination, _tls.for_guest({'dir': tls, 'peer': 'hv1'}, 'nobody', str(tmp_path)))
    _tls.setup_source(source, _tls.for_guest({'dir': tls, 'peer': 'hv2'}, 'nobody', str(tmp_path)))
    added = dict((args['qom-type'], args) for name, args in destination.calls if name == 'object-add')
    assert added['tls-creds-x509']['endpoint'] == 'server' and added['tls-creds-x509']['verify-peer'] is True
    assert added['authz-simple']['identity'] == 'CN=hv1'
    assert destination.calls[-1] == ('migrate-set-parameters', {'tls-creds': _tls.CREDS_ID, 'tls-authz': _tls.AUTHZ_ID})
    assert source.calls[-1] == ('migrate-set-parameters', {'tls-creds': _tls.CREDS_ID, 'tls-hostname': 'hv2'})
    in_clear = Recorder()
    _tls.setup_source(in_clear, None)
    assert in_clear.calls == [('migrate-set-parameters', {'tls-creds': ''})]


def test_a_qemu_loads_a_copy_only_its_account_reads_and_the_copy_is_gone_after(tmp_path):
    import pwd
    loader = Loader()
    _tls.setup_source(loader, _tls.for_guest({'dir': installed(tmp_path), 'peer': 'hv2'}, 'nobody', str(tmp_path)))
    nobody = pwd.getpwnam('nobody').pw_uid
    assert loader.seen == dict((name, (nobody, 0o400)) for name in _tls.FILES)
    assert os.path.dirname(loader.directory) == str(tmp_path / 'tls-handover')
    assert not os.path.exists(loader.directory) and os.listdir(str(tmp_path / 'tls-handover')) == []


def test_a_host_of_another_ca_is_refused_unless_replace_ca(tmp_path):
    dest = str(tmp_path / 'tls')
    _tls.install(dest, issue(tmp_path / 'pki-a'), 'root', check_mode=False)
    other = issue(tmp_path / 'pki-b')
    with pytest.raises(ValidationError) as failed:
        _tls.install(dest, other, 'root', check_mode=False)
    assert failed.value.field == 'replace_ca' and "another CA's certificate" in str(failed.value)
    assert _tls.install(dest, other, 'root', check_mode=False, replace_ca=True) == list(_tls.FILES)


def test_modes_that_drifted_are_set_again(tmp_path):
    dest = tmp_path / 'tls'
    files = issue(tmp_path / 'pki')
    _tls.install(str(dest), files, 'root', check_mode=False)
    os.chmod(dest / 'server-key.pem', 0o644)
    assert _tls.install(str(dest), files, 'root', check_mode=False) == ['server-key.pem']
    assert stat.S_IMODE(os.lstat(dest / 'server-key.pem').st_mode) == 0o600
    os.chmod(dest, 0o777)
    assert _tls.install(str(dest), files, 'root', check_mode=True) == ['tls/']
    assert _tls.install(str(dest), files, 'root', check_mode=False) == ['tls/']
    assert stat.S_IMODE(os.lstat(dest).st_mode) == 0o750


def test_a_key_copy_a_killed_run_left_is_swept_and_a_fresh_one_kept(tmp_path):
    """A run killed between copying the credentials for QEMU and removing them left the key
    readable by the guest's account: the next handover (or the host module) removes it."""
    handover = tmp_path / 'tls-handover'
    handover.mkdir()
    stale, fresh, other = handover / 'tls.old', handover / 'tls.new', handover / 'not-ours'
    for directory in (stale, fresh, other):
        directory.mkdir()
        (directory / 'server-key.pem').write_text('key')
    old = time.time() - _tls.STALE_HANDOVER_S - 5
    os.utime(str(stale), (old, old))
    os.utime(str(other), (old, old))
    assert _tls.sweep_handover(str(handover)) == ['tls.old']
    assert sorted(os.listdir(str(handover))) == ['not-ours', 'tls.new']
