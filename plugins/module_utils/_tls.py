# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Encrypted, authenticated migration streams: a host's TLS credentials and QEMU's use of them.

Each hypervisor keeps, in one root-owned directory, the fleet CA's certificate and its own
certificate and key under the names QEMU's ``tls-creds-x509`` loads: ``server-*`` when it
receives a migration, ``client-*`` when it sends one (one certificate, good for both). A host's
certificate names it: subject ``CN=<inventory name>`` and that DNS name. The key is root's alone
(0600): a QEMU gets a copy only to load it for a migration (``handed_over``), readable by its
own account only and removed as soon as QEMU has loaded it, so a compromised guest that is not
migrating cannot take the host's migration identity.

During a move the destination admits only the source it expects (``authz-simple`` on the source's
subject) and presents its own certificate; the source checks that certificate against the
destination's name (``tls-hostname``). So a stream is encrypted, and neither a host outside the
fleet nor another fleet host can feed a destination or receive a group.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import os
import pwd
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager

from ansible_collections.ivshmem.fleet.plugins.module_utils import _host
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._layout import Layout
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import check_name
from ansible_collections.ivshmem.fleet.plugins.module_utils._qmp import QMPError

CA = 'ca-cert.pem'
CERTIFICATES = (CA, 'server-cert.pem', 'client-cert.pem')
KEYS = ('server-key.pem', 'client-key.pem')
FILES = CERTIFICATES + KEYS
CREDS_ID = 'ivshmem-fleet-migration-tls'
AUTHZ_ID = 'ivshmem-fleet-migration-authz'


def identity(host):
    """The subject QEMU reads off a host's certificate (gnutls' form of the DN)."""
    return 'CN=%s' % host


def check_settings(field, value):
    """``None`` (in clear) or {'dir': path, 'peer': inventory name of the other host}."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get('dir'), str) or not value['dir'].startswith('/'):
        raise ValidationError(field, 'must be a dict with an absolute dir and the peer host name')
    return {'dir': os.path.normpath(value['dir']), 'peer': check_name(field + '.peer', value.get('peer'))}


def missing(directory):
    """The credential files this host lacks (an empty list when it is ready)."""
    return [name for name in FILES if not os.path.isfile(os.path.join(directory, name))]


def _replace_object(qmp, arguments):
    """object-add, replacing an object of the same ID that an earlier attempt left."""
    try:
        qmp.command('object-del', {'id': arguments['id']})
    except QMPError:
        pass  # there was none
    qmp.command('object-add', arguments)


def for_guest(settings, account, runtime_dir):
    """``settings`` (check_settings) for the QEMU that runs as ``account``; None stays None."""
    if settings is None:
        return None
    return dict(settings, account=account, handover_dir=Layout(runtime_dir).tls_handover())


# A handover lasts as long as QEMU takes to load the files (milliseconds); one older than this was
# left by a run killed in between, and its key copy is readable by a guest's account.
STALE_HANDOVER_S = 60


def sweep_handover(handover_dir, now=None):
    """Remove key copies that killed runs left behind (older than STALE_HANDOVER_S); returns
    their names. Only root's ``tls.*`` directories are touched, never through a link."""
    now = time.time() if now is None else now
    removed = []
    try:
        names = os.listdir(handover_dir)
    except OSError:
        return removed
    for name in sorted(names):
        path = os.path.join(handover_dir, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if name.startswith('tls.') and stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and \
                now - info.st_mtime > STALE_HANDOVER_S:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    return removed


@contextmanager
def handed_over(settings):
    """A directory with a copy of the host's credentials that only ``settings['account']`` may
    read, for as long as QEMU takes to load them. It is made by root, in a root-owned directory
    the account can enter but not change, so nothing planted there is followed; removed after."""
    _host.ensure_dir(settings['handover_dir'], 0o711)
    sweep_handover(settings['handover_dir'])
    work = tempfile.mkdtemp(prefix='tls.', dir=settings['handover_dir'])
    try:
        os.chmod(work, 0o711)
        uid = pwd.getpwnam(settings['account']).pw_uid
        for name in FILES:
            found = _host.read_own_file(os.path.join(settings['dir'], name))
            if found is None:
                raise ValidationError('tls', '%s/%s is missing or not a plain file of root\'s' % (settings['dir'], name))
            fd = os.open(os.path.join(work, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o400)
            try:
                os.fchown(fd, uid, -1)
                os.write(fd, found[0])
            finally:
                os.close(fd)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _add_credentials(qmp, settings, endpoint):
    with handed_over(settings) as directory:
        # QEMU reads the files while it completes the object; later sessions use what it loaded.
        _replace_object(qmp, {'qom-type': 'tls-creds-x509', 'id': CREDS_ID, 'dir': directory,
                              'endpoint': endpoint, 'verify-peer': True})


def setup_source(qmp, settings):
    """The sending QEMU: TLS client, checking the destination's certificate names ``peer``.
    ``settings``: for_guest()'s, or None for a stream in clear."""
    if settings is None:
        qmp.command('migrate-set-parameters', {'tls-creds': ''})
        return
    _add_credentials(qmp, settings, 'client')
    qmp.command('migrate-set-parameters', {'tls-creds': CREDS_ID, 'tls-hostname': settings['peer']})


def setup_destination(qmp, settings):
    """The receiving QEMU: TLS server, admitting only a client whose certificate names ``peer``.
    ``settings``: for_guest()'s, or None for a stream in clear."""
    if settings is None:
        return
    _add_credentials(qmp, settings, 'server')
    _replace_object(qmp, {'qom-type': 'authz-simple', 'id': AUTHZ_ID, 'identity': identity(settings['peer'])})
    qmp.command('migrate-set-parameters', {'tls-creds': CREDS_ID, 'tls-authz': AUTHZ_ID})


def install(directory, files, group, check_mode, replace_ca=False):
    """Write the credential files (contents in ``files``); returns the names that changed.

    The directory is root's, 0750 and readable by ``group``; certificates are 0644 root:group,
    keys 0600 root:root (a QEMU gets them through handed_over). Files are replaced whole, never followed
    (_host.write_file). A host that already trusts another CA keeps it unless ``replace_ca``:
    a second CA made by another controller would split the fleet.
    """
    unknown = sorted(set(files) - set(FILES))
    if unknown or sorted(files) != sorted(FILES):
        raise ValidationError('files', 'must hold exactly %s' % ', '.join(FILES))
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        if check_mode:
            return list(FILES)  # the play creates the group before this task runs for real
        raise ValidationError('group', 'no group %r on this host' % group)
    held_ca = _host.read_own_file(os.path.join(directory, CA))
    if held_ca is not None and held_ca[0] != files[CA].encode('ascii') and not replace_ca:
        raise ValidationError('replace_ca', '%s/%s is another CA\'s certificate: this host got its credentials '
                                            'from another CA (another controller, or another pki_dir). Point pki_dir '
                                            'at the fleet\'s CA, or set replace_ca to move this host to this one '
                                            '(moves between hosts of the two CAs fail)' % (directory, CA))
    changed = [name for name in FILES if _differs(os.path.join(directory, name), files[name], *_owner(name, gid))]
    try:
        info = os.lstat(directory)
        dir_differs = (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) != (0, gid, 0o750)
    except FileNotFoundError:
        dir_differs = True
    if dir_differs and not changed:
        changed = [os.path.basename(directory) + '/']
    if changed and not check_mode:
        _host.ensure_dir(os.path.dirname(directory), 0o755)
        _host.ensure_dir(directory, 0o750, 'root', group)
        # This directory is the collection's own: its owner and mode are set whatever they were.
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            raise ValidationError('dest', '%s is not a directory' % directory)
        os.lchown(directory, 0, gid)
        os.chmod(directory, 0o750)
        for name in FILES:
            if name not in changed:
                continue
            path = os.path.join(directory, name)
            file_gid, mode = _owner(name, gid)
            _host.write_file(path, files[name].encode('ascii'), mode)
            os.lchown(path, 0, file_gid)
    return changed


def _owner(name, gid):
    """(group, mode) of a credential file: keys are root's alone."""
    return (0, 0o600) if name in KEYS else (gid, 0o644)


def remove(directory, check_mode):
    present = [name for name in FILES if os.path.lexists(os.path.join(directory, name))]
    if present and not check_mode:
        for name in present:
            os.unlink(os.path.join(directory, name))
    return present


def _differs(path, content, gid, mode):
    found = _host.read_own_file(path)
    return found is None or found[0] != content.encode('ascii') or found[1].st_gid != gid or \
        stat.S_IMODE(found[1].st_mode) != mode
