"""The local lab: real virtual machines (TCG) acting as hypervisor hosts.

    lab.py up [N] [--instance-config FILE]
                      boot N hosts (default 3), wait until SSH answers, write the inventory
                      (and Molecule's instance config when asked)
    lab.py down       stop every host and remove their disks and sockets
    lab.py status     show the hosts

Each host boots the image from build-image.sh (kernel and initrd direct, one qcow2 overlay per
host), gets its own machine-id and SSH host keys at first boot, is reached over SSH on a
127.0.0.1 port, and joins a private lab network (QEMU socket multicast bound to loopback) that
carries the migration traffic. Standard library only.
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CACHE = os.environ.get('LAB_CACHE') or os.path.join(os.environ.get('IVSHMEM_FLEET_CACHE') or os.path.join(REPO, '.cache'), 'lab')
RUN = os.path.join(CACHE, 'run')
STATE = os.path.join(RUN, 'lab.json')
KEY = os.path.join(CACHE, 'ssh', 'id_ed25519')
LAB_NET = '192.168.77.%d'
SSH_OPTIONS = ['-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR',
               '-o', 'ConnectTimeout=5', '-o', 'BatchMode=yes']
BOOT_TIMEOUT = float(os.environ.get('LAB_BOOT_TIMEOUT', '240'))


def log(message):
    sys.stderr.write('lab: %s\n' % message)
    sys.stderr.flush()


def image_dir():
    subprocess.run([os.path.join(HERE, 'build-image.sh')], check=True, stdout=sys.stderr)
    images = sorted(d for d in os.listdir(CACHE) if d.startswith('image-'))
    return os.path.join(CACHE, images[-1])


def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return handle.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except (OSError, IndexError):
        return False


def load():
    try:
        with open(STATE) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {'hosts': {}}


def save(state):
    os.makedirs(RUN, exist_ok=True)
    with open(STATE + '.tmp', 'w') as handle:
        json.dump(state, handle, indent=1)
    os.rename(STATE + '.tmp', STATE)


def ssh(host, command, timeout=30):
    return subprocess.run(['ssh', '-i', KEY, '-p', str(host['port'])] + SSH_OPTIONS + ['root@127.0.0.1', command],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, check=False)


def boot(name, index, image, state):
    overlay = os.path.join(RUN, '%s.qcow2' % name)
    if os.path.exists(overlay):
        os.unlink(overlay)
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', os.path.join(image, 'base.qcow2'),
                    overlay], check=True)
    port = free_port()
    address = LAB_NET % (10 + index)
    # ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>; an empty netmask gives /32.
    append = ('root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet systemd.hostname=%s '
              'ip=%s:::255.255.255.0:%s:eth1:off' % (name, address, name))
    # qemu64 and TCG's default translation cache (not -cpu max, tb-size=64): Python in the host,
    # what every Ansible task runs, took 9.8 s against 11.3 s (mean of 4, both VMs side by side,
    # 2026-12-05); max makes glibc pick AVX paths that TCG emulates, a small cache retranslates.
    argv = ['qemu-system-x86_64', '-name', name, '-accel', 'tcg,thread=multi', '-cpu', 'qemu64',
            '-m', '1024', '-smp', '1', '-nodefaults', '-display', 'none', '-no-user-config',
            '-kernel', os.path.join(image, 'vmlinuz'), '-initrd', os.path.join(image, 'initrd.img'), '-append', append,
            '-drive', 'file=%s,if=virtio,format=qcow2,cache=unsafe,discard=unmap' % overlay,
            '-netdev', 'user,id=wan,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22' % port,
            '-device', 'virtio-net-pci,netdev=wan,mac=52:54:00:00:00:%02x' % (10 + index),
            '-netdev', 'socket,id=lab,mcast=230.77.0.1:%d,localaddr=127.0.0.1' % state['mcast_port'],
            '-device', 'virtio-net-pci,netdev=lab,mac=52:54:00:77:00:%02x' % (10 + index),
            '-device', 'virtio-rng-pci',
            '-serial', 'file:%s' % os.path.join(RUN, '%s.console' % name),
            '-pidfile', os.path.join(RUN, '%s.pid' % name)]
    with open(os.path.join(RUN, '%s.log' % name), 'ab') as output:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True)
    return {'name': name, 'pid': process.pid, 'port': port, 'address': address, 'overlay': overlay}


def up(count):
    os.makedirs(RUN, exist_ok=True)
    state = load()
    state.setdefault('mcast_port', random.randint(20000, 29999))
    image = image_dir()
    names = ['hv%d' % (i + 1) for i in range(count)]
    started = time.monotonic()
    for index, name in enumerate(names):
        host = state['hosts'].get(name)
        if host and alive(host['pid']):
            continue
        state['hosts'][name] = boot(name, index + 1, image, state)
        log('booting %s (ssh 127.0.0.1:%d, lab %s)' % (name, state['hosts'][name]['port'], state['hosts'][name]['address']))
    save(state)
    pending = set(names)
    while pending:
        if time.monotonic() - started > BOOT_TIMEOUT:
            down()
            raise SystemExit('lab: %s did not answer SSH within %.0f s; lab taken down' % (sorted(pending), BOOT_TIMEOUT))
        for name in sorted(pending):
            host = state['hosts'][name]
            if not alive(host['pid']):
                down()
                raise SystemExit('lab: %s exited during boot; see %s' % (name, os.path.join(RUN, name + '.log')))
            try:
                if ssh(host, 'systemctl is-system-running --wait >/dev/null 2>&1; true', timeout=60).returncode == 0:
                    pending.discard(name)
                    log('%s answers SSH after %.0f s' % (name, time.monotonic() - started))
            except subprocess.TimeoutExpired:
                pass
        time.sleep(1)
    write_inventory(state, names)
    print(os.path.join(RUN, 'inventory.yml'))
    return state, names


def write_instance_config(path, state, names):
    """Molecule's default driver builds its inventory from this list."""
    lines = []
    for name in names:
        host = state['hosts'][name]
        lines += ['- instance: %s' % name, '  address: 127.0.0.1', '  user: root',
                  '  port: %d' % host['port'], '  identity_file: %s' % KEY]
    with open(path, 'w') as handle:
        handle.write('\n'.join(lines) + '\n')


def write_inventory(state, names):
    lines = ['# Written by tests/lab/lab.py: the lab hosts, reached over SSH on loopback.',
             'all:', '  children:', '    hypervisors:', '      hosts:']
    for name in names:
        host = state['hosts'][name]
        lines += ['        %s:' % name,
                  '          ansible_host: 127.0.0.1',
                  '          ansible_port: %d' % host['port'],
                  '          lab_address: %s' % host['address'],
                  '          ivshmem_fleet_migration_address: %s' % host['address']]
    lines += ['      vars:',
              '        ansible_user: root',
              '        ansible_ssh_private_key_file: %s' % KEY,
              '        ansible_python_interpreter: /usr/bin/python3',
              '        ansible_ssh_common_args: "%s -o ControlMaster=auto -o ControlPersist=120s"'
              % ' '.join(SSH_OPTIONS[:6]),
              '        ansible_ssh_pipelining: true', '']
    with open(os.path.join(RUN, 'inventory.yml'), 'w') as handle:
        handle.write('\n'.join(lines))


def down():
    state = load()
    for name, host in sorted(state['hosts'].items()):
        if alive(host['pid']):
            os.kill(host['pid'], signal.SIGTERM)
            deadline = time.monotonic() + 10
            while alive(host['pid']) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(host['pid']):
                os.kill(host['pid'], signal.SIGKILL)
        for suffix in ('.qcow2', '.pid'):
            try:
                os.unlink(os.path.join(RUN, name + suffix))
            except OSError:
                pass
        log('%s down' % name)
    for leftover in ('lab.json', 'inventory.yml'):
        try:
            os.unlink(os.path.join(RUN, leftover))
        except OSError:
            pass


def status():
    for name, host in sorted(load()['hosts'].items()):
        print('%s %s ssh 127.0.0.1:%d lab %s' % (name, 'up' if alive(host['pid']) else 'down', host['port'], host['address']))


def main(argv):
    if not argv or argv[0] not in ('up', 'down', 'status'):
        raise SystemExit(__doc__)
    if argv[0] == 'up':
        config = None
        if '--instance-config' in argv:
            config = argv[argv.index('--instance-config') + 1]
            del argv[argv.index('--instance-config'):argv.index('--instance-config') + 2]
        state, names = up(int(argv[1]) if len(argv) > 1 else 3)
        if config:
            write_instance_config(config, state, names)
    elif argv[0] == 'down':
        down()
    else:
        status()


if __name__ == '__main__':
    main(sys.argv[1:])
