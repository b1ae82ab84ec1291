# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Where a rollout batch's groups wait while their hosts change (ivshmem.fleet.plan's rollout).

Pure logic: given the validated groups (their host now and their memory), the hosts of the batch,
the destinations a rollout may use and what each has room for, one destination per group of the
batch, or an error naming the group that does not fit and by how much. Each group is placed once;
a host of the batch is never a destination; the room a destination has left counts the groups
already placed on it in this batch.

What a group keeps on huge pages (its ``hugepage_need``: shared memory and guests' RAM) comes from
the kernel's pools, which MemAvailable does not count: it is left out of its ordinary need and
placed only where every page size it takes is available, counted per destination and page size.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import check_list, check_size

ANY = 'any'
MIB = 1 << 20
# What a rollout leaves free on a destination for its own system, and what one QEMU costs beyond
# its guest's RAM (the process, and TCG's translation buffer: tb-size 64 on the lab).
DEFAULT_RESERVE = '256M'
DEFAULT_GUEST_OVERHEAD = '64M'


def mib(value):
    """Bytes as MiB for messages (rounded up: a shortfall of 1 byte is not 0 MiB)."""
    return '%d MiB' % -(-value // MIB)


def short(need, have):
    """``need`` bytes where ``have`` are: what is missing, for messages."""
    return '%s short' % mib(need - have)


def _size(field, value, default):
    if isinstance(value, bool):
        raise ValidationError(field, '%r is not a size (bytes, or a number with K, M, G or T)' % (value,))
    return check_size(field, default if value is None else value, minimum=0, maximum=1 << 50, power_of_two=False)


def _hosts(field, value, known):
    """A list of distinct inventory hosts."""
    hosts = check_list(field, value)
    for index, host in enumerate(hosts):
        if host not in known:
            raise ValidationError('%s[%d]' % (field, index), '%r is not a host of the inventory' % (host,))
        if host in hosts[:index]:
            raise ValidationError('%s[%d]' % (field, index), '%s is given twice' % host)
    return hosts


def group_need(group, overhead):
    """Bytes of ordinary memory a group takes on a host: its guests' RAM and QEMU overhead, and its
    shared memory, less what of them is on huge pages (the QEMU overhead never is)."""
    guests = len(group['guest_names'])
    return group['guest_memory'] + guests * overhead + group['size'] - sum(hugepage_need(group).values())


def hugepage_need(group):
    """{page size: bytes} a group takes from a host's huge page pools (none for a group planned
    before huge pages)."""
    return group.get('hugepage_need') or {}


def _count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def hugepage_room(facts):
    """{page size: bytes} a host's pools can still give (available pages, ivshmem.fleet.info's
    ``hugepages``); a size the facts do not show is none."""
    pools = (facts or {}).get('hugepages')
    return dict((size, pool['available'] * pool['page_size']) for size, pool in sorted((pools or {}).items())
                if isinstance(pool, dict) and _count(pool.get('available')) and _count(pool.get('page_size')))


def hugepages_short(need, room):
    """[(page size, bytes needed, bytes in ``room``)] of each size of ``need`` that ``room`` lacks."""
    return [(size, need[size], room.get(size, 0)) for size in sorted(need) if need[size] > room.get(size, 0)]


def take_pages(room, need):
    """``room`` (bytes by page size) less a group's ``need``: the ledger of a destination's pools."""
    for size, size_need in need.items():
        room[size] = room.get(size, 0) - size_need


def pages_of(need):
    """``64 MiB of 2M huge pages`` (each size of ``need``), for messages."""
    return '%s huge pages' % ' and '.join('%s of %s' % (mib(need[size]), size) for size in sorted(need))


def hugepage_refusal(need, hosts, left, context=''):
    """Why none of ``hosts`` (each with ``left[host]``, its room by page size) takes ``need``: the
    host that comes closest, and what it lacks of each page size (``context``: what its room
    counts already)."""
    best = min(hosts, key=lambda host: sum(n - have for _s, n, have in hugepages_short(need, left[host])))
    lacking = ', '.join('%s%s%s: %s' % (mib(have), '' if len(need) == 1 else ' of ' + size,
                                        '' if len(hosts) > 1 else ' available', short(n, have))
                        for size, n, have in hugepages_short(need, left[best]))
    return 'needs %s; %s%s' % (pages_of(need), context, 'most free: %s with %s' % (best, lacking) if len(hosts) > 1
                               else '%s has %s' % (best, lacking))


def check_destination_pages(groups, destination, facts):
    """The huge pages of ``groups`` (each as planned), all moving to ``destination``, available
    there together (``facts``: its ivshmem.fleet.info facts); else a ValidationError naming the
    first group that does not fit, the host, the page size and the shortfall. Facts without its
    pools (not gathered) say nothing: the move's preflight checks again. A group whose move to or
    from there is in transition is left to that preflight too: the pages it holds there already
    are free to it, which the facts cannot tell."""
    if not isinstance(facts, dict) or not isinstance(facts.get('hugepages'), dict):
        return
    left = {destination: hugepage_room(facts)}
    before = []
    for group in groups:
        transition = group.get('in_transition') or {}
        if destination in (transition.get('source'), transition.get('destination')):
            continue
        need = hugepage_need(group)
        if hugepages_short(need, left[destination]):
            raise ValidationError('groups[%s]' % group['name'], hugepage_refusal(
                need, [destination], left, 'with the groups moving there before it (%s), ' % ', '.join(before)
                if before else ''))
        take_pages(left[destination], need)
        before.append(group['name'])


def host_room(host, facts, capacity, reserve, overhead):
    """Bytes of ordinary memory a destination can take: what it has available, never more than its
    total less what its servers and running guests are given (less what of it is on huge pages,
    which the pools give), less the reserve, capped by ``capacity`` when set."""
    where = 'facts.%s' % host
    memory = (facts or {}).get('host_memory')
    if not isinstance(memory, dict) or not all(
            isinstance(memory.get(k), int) and not isinstance(memory.get(k), bool) for k in ('total', 'available')):
        raise ValidationError(where + '.host_memory', 'unknown: a rollout destination needs the total and '
                              'available memory that ivshmem.fleet.info reports (gather it first)')
    committed = 0
    for guest in (facts.get('guests') or {}).values():
        if isinstance(guest, dict) and guest.get('state') != 'stopped':
            memory_mib = guest.get('memory_mib')
            on_pages = guest.get('hugepages')
            committed += (memory_mib << 20 if isinstance(memory_mib, int) and not on_pages else 0) + overhead
    for server in (facts.get('servers') or {}).values():
        if isinstance(server, dict) and server.get('state') == 'started':
            spec = server.get('spec') or {}
            committed += spec['size'] if isinstance(spec.get('size'), int) and not spec.get('hugepages') else 0
    room = min(memory['available'], memory['total'] - committed) - reserve
    if capacity is not None:
        room = min(room, capacity)
    return max(room, 0)


def group_types(group, facts):
    """{guest: the versioned machine type it runs} of a group, from its current host's facts."""
    guests = ((facts or {}).get(group['current_host']) or {}).get('guests') or {}
    return dict((name, guests[name]['machine_type']) for name in group['guest_names']
                if isinstance(guests.get(name), dict) and guests[name].get('machine_type'))


def runs_types(host, facts, types):
    """Can ``host``'s QEMU run every type of ``types``? Unknown (no QEMU facts) counts as yes: the
    move itself checks again before anything changes."""
    qemu = ((facts or {}).get(host) or {}).get('qemu')
    if not isinstance(qemu, dict) or not isinstance(qemu.get('machines'), list):
        return True
    return all(machine in qemu['machines'] for machine in types.values())


def _types_refusal(group, types, hosts, facts):
    """Why no destination of ``hosts`` runs ``group``, naming each host's QEMU."""
    newest = ', '.join('%s (%s)' % (machine, name) for name, machine in sorted(types.items()))
    qemus = ', '.join('%s: QEMU %s' % (host, (((facts or {}).get(host) or {}).get('qemu') or {}).get('version'))
                      for host in hosts) or 'none'
    return 'runs machine types %s, which no rollout destination\'s QEMU runs (%s): a QEMU runs the versioned ' \
           'types of its own version and older' % (newest, qemus)


def _describe(group, need, overhead):
    pages = hugepage_need(group)
    return '%s (guests %s + QEMU overhead %s + shared memory %s%s)' % (
        mib(need), mib(group['guest_memory']), mib(len(group['guest_names']) * overhead), mib(group['size']),
        ' - %s' % pages_of(pages) if pages else '')


def place(groups, hosts, facts, options):
    """The rollout placement for ``options`` (the plan module's ``rollout``): a dict with ``moves``
    (by source host, each move a group's name, its destination and need), ``assignment`` (group ->
    destination) and ``destinations`` (room, need and what is left, per destination)."""
    options = options if isinstance(options, dict) else None
    if options is None:
        raise ValidationError('rollout', 'must be a mapping')
    unknown = sorted(set(options) - set(('batch', 'skip', 'destinations', 'reserve', 'guest_overhead', 'capacity')))
    if unknown:
        raise ValidationError('rollout.%s' % unknown[0], 'unknown option')
    batch = _hosts('rollout.batch', options.get('batch'), hosts)
    skip = _hosts('rollout.skip', options.get('skip'), hosts)
    for index, host in enumerate(skip):
        if host not in batch:
            raise ValidationError('rollout.skip[%d]' % index, '%s is not in the batch' % host)
    reserve = _size('rollout.reserve', options.get('reserve'), DEFAULT_RESERVE)
    overhead = _size('rollout.guest_overhead', options.get('guest_overhead'), DEFAULT_GUEST_OVERHEAD)
    wanted = options.get('destinations', ANY)
    if wanted is None or wanted == ANY:
        candidates = list(hosts)
    else:
        candidates = _hosts('rollout.destinations', wanted, hosts)
        if not candidates:
            raise ValidationError('rollout.destinations', 'give at least one host, or %s' % ANY)
        for index, host in enumerate(candidates):
            if host in batch:
                raise ValidationError('rollout.destinations[%d]' % index,
                                      '%s is in the batch: a host that changes cannot keep groups meanwhile' % host)
    capacity = options.get('capacity') or {}
    if not isinstance(capacity, dict):
        raise ValidationError('rollout.capacity', 'must be a mapping of host to size')
    for host in sorted(capacity):
        if host not in hosts:
            raise ValidationError('rollout.capacity.%s' % host, 'not a host of the inventory')
    facts = facts or {}
    rooms = dict((host, host_room(host, facts.get(host), None if capacity.get(host) is None else
                                  _size('rollout.capacity.%s' % host, capacity[host], 0), reserve, overhead))
                 for host in candidates)
    pages = dict((host, hugepage_room(facts.get(host))) for host in candidates)
    needs = dict((group['name'], group_need(group, overhead)) for group in groups)
    types = dict((group['name'], group_types(group, facts)) for group in groups)
    # Before anything moves: every group fits somewhere other than its own host, alone, on a QEMU
    # that runs its guests' machine types, with its huge pages free there.
    for group in groups:
        others = [host for host in candidates if host != group['current_host']]
        runnable = [host for host in others if runs_types(host, facts, types[group['name']])]
        if others and not runnable:
            raise ValidationError('groups[%s]' % group['name'], _types_refusal(group, types[group['name']], others, facts))
        roomy = [host for host in runnable if needs[group['name']] <= rooms[host]]
        if roomy and not [host for host in roomy if not hugepages_short(hugepage_need(group), pages[host])]:
            raise ValidationError('groups[%s]' % group['name'], hugepage_refusal(hugepage_need(group), roomy, pages))
        best = max(runnable, key=lambda host: rooms[host]) if runnable else None
        if best is None or needs[group['name']] > rooms[best]:
            raise ValidationError('groups[%s]' % group['name'], 'needs %s, more than any rollout destination has room '
                                  'for (%s): %s' % (
                                      _describe(group, needs[group['name']], overhead),
                                      'most: %s with %s' % (best, mib(rooms[best])) if best else 'none but its own host',
                                      short(needs[group['name']], rooms[best] if best else 0)))
    # The batch: the largest group first, each to the destination with the most room left (the
    # moves spread over the destinations); a host of the batch is never one.
    usable = [host for host in candidates if host not in batch]
    left = dict((host, rooms[host]) for host in usable)
    pages_left = dict((host, dict(pages[host])) for host in usable)
    placed = dict((host, []) for host in usable)
    moving = sorted((g for g in groups if g['current_host'] in batch and g['current_host'] not in skip),
                    key=lambda g: (-needs[g['name']], g['name']))
    assignment, moves = {}, dict((host, []) for host in batch)
    for group in moving:
        name, need = group['name'], needs[group['name']]
        runnable = [host for host in usable if runs_types(host, facts, types[name])]
        if usable and not runnable:
            raise ValidationError('groups[%s]' % name, _types_refusal(group, types[name], usable, facts))
        roomy = [host for host in runnable if left[host] >= need]
        fitting = [host for host in roomy if not hugepages_short(hugepage_need(group), pages_left[host])]
        before = ', '.join('%s on %s' % (g, h) for h in usable for g in placed[h]) or 'none'
        if roomy and not fitting:
            raise ValidationError('groups[%s]' % name, '%s (a smaller rollout_serial or more destinations)' % hugepage_refusal(
                hugepage_need(group), roomy, pages_left, 'with this batch\'s groups placed before it (%s), ' % before))
        if not fitting:
            best = max(runnable, key=lambda host: left[host]) if runnable else None
            raise ValidationError('groups[%s]' % name, 'needs %s; with this batch\'s groups placed before it (%s) the '
                                  'most room left is %s: %s (a smaller rollout_serial or more destinations)' % (
                                      _describe(group, need, overhead), before,
                                      '%s on %s' % (mib(left[best]), best) if best else 'none (no destination)',
                                      short(need, left[best] if best else 0)))
        destination = max(fitting, key=lambda host: left[host])
        left[destination] -= need
        take_pages(pages_left[destination], hugepage_need(group))
        placed[destination].append(name)
        assignment[name] = destination
        moves[group['current_host']].append({'name': name, 'destination': destination, 'need': need, 'group': group})
    return {
        'batch': batch, 'assignment': assignment, 'moves': moves,
        'destinations': dict((host, {'room': rooms[host], 'left': left[host], 'groups': placed[host],
                                     'hugepages_room': pages[host], 'hugepages_left': pages_left[host]})
                             for host in usable),
    }
