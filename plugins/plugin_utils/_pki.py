# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Controller side: the fleet's migration CA and the certificates it issues to hypervisors.

The CA lives in a directory only the controller's user can read (``ca-key.pem`` 0600). Each host
gets one certificate, good as a TLS server and client, whose subject is ``CN=<inventory name>``
and whose names are the inventory name and the host's migration addresses (see _tls.py for how
QEMU uses it). Issued certificates are kept beside the CA and reused while they still match the
host's names and have more than a month left, so a second run changes nothing.

Uses ``cryptography``, which ansible-core itself requires on the controller.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import fcntl
import ipaddress
import os
import stat
from contextlib import contextmanager

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    CRYPTOGRAPHY_ERROR = None
except ImportError as exc:  # reported when a certificate is needed, not at import
    CRYPTOGRAPHY_ERROR = exc

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError
from ansible_collections.ivshmem.fleet.plugins.module_utils._rules import write_atomic
from ansible_collections.ivshmem.fleet.plugins.module_utils._tls import CA

RENEW_BEFORE = datetime.timedelta(days=30)  # at most: a third of a short validity
CLOCK_SKEW = datetime.timedelta(days=1)


class PKIError(FleetError):
    """The CA directory is unusable; the message names it."""


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode('ascii')


def _cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode('ascii')


def _not_after(cert):
    # not_valid_after_utc is cryptography >= 42; distributions ship older ones (Debian 12: 38).
    found = getattr(cert, 'not_valid_after_utc', None)
    return found if found is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _public_bytes(key):
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _subject(name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _alt_names(names, addresses):
    entries = [x509.DNSName(name) for name in names]
    entries += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    return entries


class Authority:
    """The fleet CA in ``directory`` (created on first use unless ``create`` is False)."""

    def __init__(self, directory, valid_days=825):
        if CRYPTOGRAPHY_ERROR is not None:
            raise PKIError('the Python library cryptography is needed on the controller (%s)' % CRYPTOGRAPHY_ERROR)
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.valid_days = valid_days
        self.key = self.cert = None

    @contextmanager
    def locked(self):
        """Held while the CA is created or a certificate issued: forks of one play run at once."""
        os.makedirs(self.directory, 0o700, exist_ok=True)
        with open(os.path.join(self.directory, '.lock'), 'a') as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def exists(self):
        return os.path.isfile(os.path.join(self.directory, 'ca-key.pem'))

    def _write(self, relative, text, mode):
        path = os.path.join(self.directory, relative)
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        write_atomic(path, text, mode, exact_mode=False)

    def _read(self, relative):
        try:
            with open(os.path.join(self.directory, relative), 'rb') as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def load(self, create=True):
        """Load the CA, creating it when missing; returns True when it was created."""
        created = False
        if not self.exists():
            if not create:
                raise PKIError('no CA in %s' % self.directory)
            key = ec.generate_private_key(ec.SECP256R1())
            now = _now()
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'ivshmem.fleet migration CA')])
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=3650))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                   critical=True)
                    .sign(key, hashes.SHA256()))
            self._write('ca-key.pem', _key_pem(key), 0o600)
            self._write(CA, _cert_pem(cert), 0o644)
            created = True
        info = os.stat(os.path.join(self.directory, 'ca-key.pem'))
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise PKIError('%s/ca-key.pem is readable by others (mode %o): make it 0600' % (
                self.directory, stat.S_IMODE(info.st_mode)))
        try:
            self.key = serialization.load_pem_private_key(self._read('ca-key.pem'), None)
            self.cert = x509.load_pem_x509_certificate(self._read(CA))
        except (TypeError, ValueError) as exc:
            raise PKIError('the CA in %s cannot be read: %s' % (self.directory, exc))
        return created

    def credentials(self, host, names, addresses, keep=True):
        """{file name: PEM text} for ``host`` (see _tls.FILES); issues a certificate when needed
        (and keeps it for the next run unless ``keep`` is False: check mode)."""
        try:
            return self._credentials(host, names, addresses, keep)
        except (ValueError, TypeError, UnicodeError) as exc:
            raise PKIError('cannot issue a certificate for %s: %s' % (host, exc))

    def _credentials(self, host, names, addresses, keep):
        names = [host] + [name for name in names if name != host]
        held = self._read(os.path.join('hosts', host, 'cert.pem'))
        key_pem = self._read(os.path.join('hosts', host, 'key.pem'))
        cert = self._held(held, key_pem, names, addresses)
        if cert is None:
            key = ec.generate_private_key(ec.SECP256R1())
            now = _now()
            cert = (x509.CertificateBuilder().subject_name(_subject(host)).issuer_name(self.cert.subject)
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=self.valid_days))
                    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                    .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                                   critical=False)
                    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                          ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                    .add_extension(x509.SubjectAlternativeName(_alt_names(names, addresses)), critical=False)
                    .sign(self.key, hashes.SHA256()))
            key_pem = _key_pem(key).encode('ascii')
            if keep:
                # A run cut between the two writes leaves a pair that does not match: _held
                # sees that and issues again.
                self._write(os.path.join('hosts', host, 'key.pem'), key_pem.decode('ascii'), 0o600)
                self._write(os.path.join('hosts', host, 'cert.pem'), _cert_pem(cert), 0o644)
        cert_text, key_text = _cert_pem(cert), key_pem.decode('ascii')
        return {CA: _cert_pem(self.cert), 'server-cert.pem': cert_text, 'client-cert.pem': cert_text,
                'server-key.pem': key_text, 'client-key.pem': key_text}

    def _held(self, cert_pem, key_pem, names, addresses):
        """The certificate issued before, if it still serves: this CA's, these names, its own key,
        and more than RENEW_BEFORE (or a third of its validity) left."""
        if not cert_pem or not key_pem:
            return None
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, None)
            alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            # Signed by this CA (an EC key): the signature over the certificate's body.
            self.cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                                          ec.ECDSA(cert.signature_hash_algorithm))
        except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
            return None
        if cert.issuer != self.cert.subject or cert.subject != _subject(names[0]):
            return None
        if _public_bytes(cert.public_key()) != _public_bytes(key.public_key()):
            return None
        renew = min(RENEW_BEFORE, datetime.timedelta(days=self.valid_days) / 3)
        if set(alt) != set(_alt_names(names, addresses)) or _not_after(cert) - _now() <= renew:
            return None
        return cert
