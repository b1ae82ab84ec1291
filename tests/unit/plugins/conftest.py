"""What the unit tests of several plugin kinds share."""
import pytest

from ansible_collections.ivshmem.fleet.plugins.plugin_utils._pki import Authority


@pytest.fixture
def issue():
    """issue(directory, host, names, addresses, keep): a host's migration credentials from the
    controller's CA kept in ``directory`` (plugin_utils/_pki.py), as _tls.py installs them."""
    def issue(directory, host='hv1', names=(), addresses=('192.0.2.1',), keep=True):
        authority = Authority(str(directory))
        with authority.locked():
            authority.load()
            return authority.credentials(host, list(names), list(addresses), keep=keep)
    return issue
