"""Migration credentials: the controller's CA (plugin_utils/_pki.py), which issues each host the
files module_utils/_tls.py installs (tests/unit/plugins/module_utils/test_tls.py)."""
import os
import stat

import pytest
from cryptography import x509

from ansible_collections.ivshmem.fleet.plugins.module_utils import _tls
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._pki import Authority, PKIError


def issue(directory, host='hv1', names=(), addresses=('192.0.2.1',), keep=True):
    authority = Authority(str(directory))
    with authority.locked():
        authority.load()
        return authority.credentials(host, list(names), list(addresses), keep=keep)


def test_the_ca_key_is_private_and_a_certificate_names_the_host(tmp_path):
    files = issue(tmp_path / 'pki', names=['hv1.lab'])
    assert sorted(files) == sorted(_tls.FILES)
    assert stat.S_IMODE(os.stat(tmp_path / 'pki' / 'ca-key.pem').st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(files['server-cert.pem'].encode())
    assert cert.subject.rfc4514_string() == 'CN=hv1'
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ['hv1', 'hv1.lab']
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ['192.0.2.1']
    ca = x509.load_pem_x509_certificate(files['ca-cert.pem'].encode())
    cert.verify_directly_issued_by(ca)
    assert files['client-cert.pem'] == files['server-cert.pem']
    assert 'PRIVATE KEY' in files['server-key.pem']


def test_a_second_issue_reuses_the_certificate_until_the_names_change(tmp_path):
    first = issue(tmp_path)
    assert issue(tmp_path) == first
    renamed = issue(tmp_path, addresses=['192.0.2.9'])
    assert renamed['server-cert.pem'] != first['server-cert.pem']
    assert renamed['ca-cert.pem'] == first['ca-cert.pem']


def test_check_mode_keeps_nothing(tmp_path):
    first = issue(tmp_path)
    predicted = issue(tmp_path, addresses=['192.0.2.9'], keep=False)
    assert predicted['server-cert.pem'] != first['server-cert.pem']
    assert issue(tmp_path) == first


def test_a_ca_key_others_can_read_is_refused(tmp_path):
    issue(tmp_path)
    os.chmod(tmp_path / 'ca-key.pem', 0o644)
    with pytest.raises(PKIError, match='readable by others'):
        Authority(str(tmp_path)).load()


def test_a_key_that_does_not_match_its_certificate_is_issued_again(tmp_path):
    first = issue(tmp_path)
    other_key = issue(tmp_path / 'elsewhere')['server-key.pem']
    with open(tmp_path / 'hosts' / 'hv1' / 'key.pem', 'w') as handle:
        handle.write(other_key)  # as a run cut between writing the key and the certificate leaves it
    again = issue(tmp_path)
    assert again['server-cert.pem'] != first['server-cert.pem']
    assert issue(tmp_path) == again


def test_a_short_validity_is_still_idempotent(tmp_path):
    authority = Authority(str(tmp_path), valid_days=10)
    with authority.locked():
        authority.load()
        first = authority.credentials('hv1', [], [])
        assert authority.credentials('hv1', [], []) == first


def test_a_name_that_cannot_be_in_a_certificate_is_a_pki_error(tmp_path):
    with pytest.raises(PKIError):
        issue(tmp_path, names=['h\u00e9te'])
