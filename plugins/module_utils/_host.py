# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Host-side facts and chores: processes, sockets, files, the service account, /dev/kvm."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import json
import os
import pwd
import signal
import socket
import stat
import subprocess

from ansible_collections.ivshmem.fleet.plugins.module_utils import _rules
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError, ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import DEFAULT_RUNTIME_DIR
from ansible_collections.ivshmem.fleet.plugins.module_utils._waiter import WaitTimeout, wait_for

ACCOUNT_TIMEOUT = 60  # groupadd, useradd


class HostError(FleetError):
    """A host operation failed; the message says which and why."""


# --- processes --------------------------------------------------------------------------
def read_pidfile(path):
    """The pid in a pidfile a service account wrote (its directory is the account's): read only
    from a plain file, never through a link, never blocking on a FIFO planted in its place. The pid
    itself proves nothing: callers check the process (process_alive with the account's uid)."""
    try:
        fd = os.open(path, _NOFOLLOW_READ)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return int(os.read(fd, 64).decode('ascii', 'replace').strip() or 0) or None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def uid_of(user):
    """The uid of account ``user``, or None where there is no such account."""
    try:
        return pwd.getpwnam(user).pw_uid if user else None
    except KeyError:
        return None


def process_alive(pid, marker=None, uid=None):
    """True if ``pid`` runs (not a zombie), its command line contains ``marker`` and, with ``uid``,
    it runs as that account (a pid another account wrote names none of its processes)."""
    if not pid:
        return False
    try:
        with open('/proc/%d/stat' % pid) as handle:
            if handle.read().rsplit(')', 1)[1].split()[0] in ('Z', 'X'):
                return False
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            cmdline = handle.read().decode('utf-8', 'replace')
        if uid is not None:
            with open('/proc/%d/status' % pid) as handle:
                real = next(line for line in handle if line.startswith('Uid:')).split()[1]
            if int(real) != uid:
                return False
    except (OSError, IndexError, StopIteration, ValueError):
        return False
    return marker is None or marker in cmdline


def start_time(pid):
    """When process ``pid`` started (clock ticks after boot, /proc/PID/stat field 22), or None.
    With the pid, it names one process for good: a pid reused later starts later."""
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return int(handle.read().rsplit(')', 1)[1].split()[19])
    except (OSError, IndexError, ValueError, TypeError):
        return None


def held_process(identity, uid):
    """The pid of ``identity`` ([pid, start time], taken by root when it spawned the process)
    while that very process runs as ``uid``, else None: no file an account can write is read."""
    try:
        pid, started = int(identity[0]), int(identity[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    return pid if start_time(pid) == started and process_alive(pid, uid=uid) else None


def terminate(pid, marker, timeout, uid=None):
    """SIGTERM, wait, then SIGKILL, only while ``pid`` is the process described (marker, uid).
    Returns the seconds waited."""
    waited = 0.0
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not process_alive(pid, marker, uid):
            return waited
        try:
            os.kill(pid, sig)
        except OSError:
            return waited
        try:
            # First look after 10 ms: a QEMU told to quit exits within milliseconds, and the
            # caller (a migration's source, a guest's restart) waits on it.
            _value, spent = wait_for('pid %d to exit' % pid, lambda: not process_alive(pid, marker, uid), timeout,
                                     interval=0.01)
            return waited + spent
        except WaitTimeout as exc:
            waited += exc.waited
    raise HostError('pid %d did not exit after SIGKILL' % pid)


def spawn(argv, log_path, user=None, group=None, env=None, umask=-1):
    """Start a long-running program in its own session, as ``user``; returns the Popen.

    The process outlives the module (it is reparented when the module exits).
    """
    kwargs = {'umask': umask}
    if user is not None and os.geteuid() == 0:
        account = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else account.pw_gid
        if account.pw_uid == 0 or gid == 0:
            raise HostError('refusing to run %s as %s: uid or gid 0 is root' % (argv[0], user))
        kwargs.update(user=account.pw_uid, group=gid, extra_groups=os.getgrouplist(user, gid))
    log = open_log(log_path)
    try:
        # Not run_command (ansible-core 2.21's pylint asks for it): a daemon as another account, in
        # a session of its own, outliving the module; the server program runs outside any module.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,  # pylint: disable=ansible-bad-function
                                close_fds=True, start_new_session=True, env=env, **kwargs)
    except OSError as exc:
        raise HostError('cannot run %s: %s' % (argv[0], exc))
    finally:
        os.close(log)


def open_log(path):
    """A descriptor root appends a process's output to, in a directory a service account owns.
    Whatever the account planted at ``path`` (a link to a root-only file, a FIFO, a hard link, a
    file of its own) is unlinked, never followed or opened, and a fresh file of root's made."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None and not (stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_nlink == 1):
        try:
            os.unlink(path)
        except OSError as exc:
            raise HostError('%s is not a log of root\'s and cannot be replaced: %s' % (path, exc))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise HostError('cannot open the log %s: %s' % (path, exc))
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
        os.close(fd)
        raise HostError('%s changed under root while it was opened; not used' % path)
    os.set_blocking(fd, True)
    return fd


def launch_daemon(argv, log_path, timeout, user=None, group=None, umask=-1):
    """Run a program that daemonizes itself; wait (bounded) for its launcher to return.

    Returns the seconds waited. A launcher still running at the timeout is killed.
    """
    process = spawn(argv, log_path, user, group, umask=umask)
    try:
        _value, waited = wait_for('%s to start' % os.path.basename(argv[0]),
                                  lambda: process.poll() is not None, timeout, interval=0.02)
    except WaitTimeout as exc:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise HostError('%s did not finish starting within %.0f s and was killed; log: %s' % (
            os.path.basename(argv[0]), exc.waited, tail(log_path)))
    if process.returncode != 0:
        raise HostError('%s failed to start (exit %d): %s' % (os.path.basename(argv[0]), process.returncode, tail(log_path)))
    return waited


def run_program(argv, timeout, user='nobody'):
    """Run a short program as ``user`` (as root: nobody, so a probe runs with no privilege; None:
    as the caller) with a clean environment; returns (exit status, stdout, stderr) as text. A
    program still running at ``timeout`` is killed. With spawn, the one place processes start."""
    kwargs = {}
    if user is not None and os.geteuid() == 0:
        try:
            account = pwd.getpwnam(user)
            kwargs.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
        except KeyError:
            raise HostError('cannot run %s: no account %s' % (argv[0], user))
    try:
        # Not run_command: as another account (nobody), with a timeout, and from the server
        # program too, which runs outside any module.
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # pylint: disable=ansible-bad-function
                              stderr=subprocess.PIPE, timeout=timeout, check=False, close_fds=True, cwd='/',
                              env={'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'LC_ALL': 'C'}, **kwargs)
    except subprocess.TimeoutExpired:
        raise HostError('%s did not finish within %d s' % (' '.join(argv), timeout))
    except OSError as exc:
        raise HostError('cannot run %s: %s' % (argv[0], exc))
    return done.returncode, done.stdout.decode('utf-8', 'replace'), done.stderr.decode('utf-8', 'replace')


def tail(path, lines=5):
    """The last lines of a log root made (open_log): never read through a link or from a file
    another account put in its place, so an error message cannot carry a root-only file."""
    fd = _open_own_file(path)
    if fd is None:
        return ''
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - 4096), os.SEEK_SET)
        text = os.read(fd, 4096).decode('utf-8', 'replace')
    except OSError:
        return ''
    finally:
        os.close(fd)
    return ' | '.join(text.strip().splitlines()[-lines:])


# --- sockets ------------------------------------------------------------------------------
def _unix_listeners(table, path):
    """The inodes of the UNIX sockets listening on ``path``, one by one, from ``table`` (a
    /proc/.../net/unix, its header line skipped). Raises OSError or ValueError on an unreadable table."""
    with open(table) as handle:
        next(handle, None)
        for line in handle:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                yield fields[6]


def unix_listening(path, pid=None):
    """True if some process listens on the UNIX socket ``path`` (no connection made:
    the upstream server exits when a client connects and closes at once).

    ``pid``: look in that process's network namespace (a server unit has its own, under
    PrivateNetwork; its socket on the file system still reaches it from everywhere)."""
    try:
        for _inode in _unix_listeners('/proc/%d/net/unix' % pid if pid else '/proc/net/unix', path):
            return True
    except (OSError, ValueError):
        return False
    return False


def _listening_inodes(path):
    """Inodes of the UNIX sockets listening on ``path`` (from /proc/net/unix)."""
    inodes = set()
    try:
        for inode in _unix_listeners('/proc/net/unix', path):
            inodes.add(inode)
    except (OSError, ValueError):
        pass
    return inodes


def socket_owner(path, uid):
    """The pid of a process of account ``uid`` that listens on the UNIX socket ``path``, or None.
    What the kernel says, where a pidfile says what its account wrote: a lost, lying or planted
    pidfile never hides a running QEMU or server from root, nor names another process."""
    inodes = _listening_inodes(path)
    if not inodes or uid is None:
        return None
    wanted = set('socket:[%s]' % inode for inode in inodes)
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            if os.stat('/proc/' + name).st_uid != uid:
                continue
            for fd in os.listdir('/proc/%s/fd' % name):
                if os.readlink('/proc/%s/fd/%s' % (name, fd)) in wanted:
                    return int(name)
        except OSError:
            continue
    return None


def tcp_listening(port):
    """True if some process on this host listens on TCP ``port`` (any address, IPv4 or IPv6)."""
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == '0A' and int(fields[1].rsplit(':', 1)[1], 16) == port:
                        return True
        except (OSError, ValueError, StopIteration, IndexError):
            continue
    return False


def remove_stale_socket(path):
    """Remove a socket file nobody listens on; refuse to touch anything else."""
    return _rules.remove_stale_socket(path, unix_listening, HostError) is True


# --- files ----------------------------------------------------------------------------------
# Root writes and reads files inside directories the service account owns (a server's or a
# guest's directory). Whatever that account planted there (a symlink to /etc/shadow, a hard
# link, a FIFO) is replaced or ignored, never followed: files are opened with O_NOFOLLOW,
# written to a fresh O_EXCL temporary file and renamed over, and modes set on descriptors.
_NOFOLLOW_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _open_own_file(path):
    """A descriptor of ``path`` if it is a regular file of ours (this uid, one link), else None."""
    try:
        fd = os.open(path, _NOFOLLOW_READ)
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.geteuid():
        os.close(fd)
        return None
    return fd


def _read_fd(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b''.join(chunks)
        chunks.append(chunk)


def read_own_file(path):
    """(contents, os.stat_result) of a plain file of ours, never through a link; None otherwise."""
    fd = _open_own_file(path)
    if fd is None:
        return None
    try:
        return _read_fd(fd), os.fstat(fd)
    finally:
        os.close(fd)


def write_file(path, data, mode=0o644):
    """Write atomically, never through a link; returns True when the content changed."""
    if isinstance(data, str):
        data = data.encode('utf-8')
    fd = _open_own_file(path)
    if fd is not None:
        try:
            if _read_fd(fd) == data:
                if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
                    os.fchmod(fd, mode)
                return False
        finally:
            os.close(fd)
    _rules.write_atomic(path, data, mode)
    return True


def read_json(path):
    """A JSON object we wrote, or None (missing, unreadable, not an object, or not a plain file of ours)."""
    fd = _open_own_file(path)
    if fd is None:
        return None
    try:
        record = json.loads(_read_fd(fd).decode('utf-8'))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    return record if isinstance(record, dict) else None


def write_json(path, data, mode=0o644):
    return write_file(path, json.dumps(data, indent=1, sort_keys=True) + '\n', mode)


def ensure_dir(path, mode=0o755, user=None, group=None):
    """Create a directory with this mode and owner; an existing one keeps its mode.

    Never chmod a directory the collection did not create (``memory_dir: /dev/shm``, say),
    and never follow a symlink in its place.
    """
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise HostError('%s exists and is not a directory (a symlink is not followed)' % path)
        created = False
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if parent == path or os.path.isdir(parent):  # a parent that takes no directory (/proc/...)
            raise HostError('cannot make the directory %s' % path)
        ensure_dir(parent, 0o755)
        return ensure_dir(path, mode, user, group)
    except OSError as exc:
        raise HostError('cannot make the directory %s: %s' % (path, exc.strerror))
    else:
        created = True
        os.chmod(path, mode)  # mkdir applied the umask
    if user is not None and os.geteuid() == 0:
        uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group or user).gr_gid
        info = os.lstat(path)
        if created or (info.st_uid, info.st_gid) != (uid, gid):
            os.lchown(path, uid, gid)
    return created


def names(directory):
    """The sorted entries of ``directory`` that are names the modules take (NAME_RE); none if it
    cannot be read (a runtime directory not made yet)."""
    try:
        return sorted(n for n in os.listdir(directory) if _rules.NAME_RE.match(n))
    except OSError:
        return []


def check_own_directory(field, path):
    """Refuse (ValidationError on ``field``) a directory that exists and is not root's alone: not a
    directory (a link is not followed), owned by another account, or writable by anyone but root
    (``/tmp``). Root then never builds its tree inside one another account can change."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        raise ValidationError(field, '%s exists and is not a directory' % path)
    if info.st_uid != 0 or stat.S_IMODE(info.st_mode) & 0o7022:
        raise ValidationError(field, '%s exists and is not the collection\'s (owner uid %d, mode %04o): a runtime '
                              'directory is root\'s and only root writes in it; name a directory of its own, such as '
                              '%s' % (path, info.st_uid, stat.S_IMODE(info.st_mode), DEFAULT_RUNTIME_DIR))
    return info


def remove_own_file(path, uid):
    """Unlink ``path`` only if it is a regular file owned by ``uid`` (records are not trusted for paths)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_uid != uid:
        raise HostError('%s is not a regular file owned by uid %d: not removed' % (path, uid))
    os.unlink(path)
    return True


# --- the service account --------------------------------------------------------------------
def account_exists(user, group):
    try:
        pwd.getpwnam(user)
        grp.getgrnam(group)
    except KeyError:
        return False
    return True


def ensure_group(group, check_mode):
    """Create a system group; True when it was (or in check mode would be) created."""
    try:
        grp.getgrnam(group)
        return False
    except KeyError:
        pass
    if not check_mode:
        _create_accounts([['groupadd', '--system', group]], 'group %s' % group)
    return True


def _create_accounts(commands, what):
    if os.geteuid() != 0:
        raise HostError('%s is missing, and only root can create it' % what)
    for command in commands:
        status, out, err = run_program(command, ACCOUNT_TIMEOUT, user=None)
        if status != 0:
            raise HostError('%s failed: %s' % (' '.join(command), (out + err).strip()))


def set_group_members(group, members):
    """The supplementary members of ``group`` become exactly ``members``; True when they changed."""
    if sorted(grp.getgrnam(group).gr_mem) == sorted(members):
        return False
    _create_accounts([['gpasswd', '-M', ','.join(sorted(members)), group]], 'the members of group %s' % group)
    return True


def make_shared_file(path, size, gid, mode):
    """Create ``path`` as root's, ``size`` bytes of zeros, group ``gid``, ``mode``: never through a
    link and never over a file that is there (O_EXCL), so nobody can have it opened first."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0)
    try:
        os.ftruncate(fd, size)
        os.fchown(fd, 0, gid)
        os.fchmod(fd, mode)
    except OSError:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def set_shared_file(path, gid, mode):
    """Group and mode of root's ``path`` as asked, through an fd opened without following a link
    and without blocking (a FIFO put there since it was checked: memory_dir may be anyone's)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if info.st_uid != 0 or not stat.S_ISREG(info.st_mode):
            raise HostError('%s is not a regular file of root: left as it is' % path)
        os.fchown(fd, 0, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def ensure_account(user, group, check_mode):
    """Create an unprivileged system user (and its group) a server or guest runs as.

    Returns True when something was (or in check mode would be) created.
    """
    if account_exists(user, group):
        return False
    if check_mode:
        return True
    commands = []
    try:
        grp.getgrnam(group)
    except KeyError:
        commands.append(['groupadd', '--system', group])
    try:
        pwd.getpwnam(user)
    except KeyError:
        commands.append(['useradd', '--system', '--no-create-home', '--home-dir', '/nonexistent',
                         '--shell', '/usr/sbin/nologin', '--gid', group, user])
    _create_accounts(commands, 'user %s or group %s' % (user, group))
    return True


def ensure_accounts(accounts):
    """ensure_account for each (user, group), all or none: when one cannot be made, the accounts
    this call made are removed again, so that a failed start leaves no account behind."""
    made = []
    try:
        for user, group in accounts:
            if ensure_account(user, group, False):
                made.append(user)
    except HostError:
        for user in reversed(made):
            run_program(['userdel', user], ACCOUNT_TIMEOUT, user=None)
        raise
    return made


def kvm_usable_by(user, group, device='/dev/kvm'):
    """Whether ``user`` may open /dev/kvm read-write (the question ``accel: auto`` asks)."""
    try:
        info = os.stat(device)
        account = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else account.pw_gid
    except (OSError, KeyError):  # no device, or an account not created yet
        return False
    if account.pw_uid == 0:
        return True
    if info.st_uid == account.pw_uid:
        bits = (info.st_mode >> 6) & 0o6
    elif info.st_gid in os.getgrouplist(user, gid):
        bits = (info.st_mode >> 3) & 0o6
    else:
        bits = info.st_mode & 0o6
    return bits == 0o6


def hostname():
    """This host's name (for messages that say where)."""
    return socket.gethostname()


def systemd_running():
    return os.path.isdir('/run/systemd/system')
