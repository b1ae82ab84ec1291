# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Shared-memory groups: one server, one master and its peers, on one host (ivshmem.fleet.plan).

A group in the inventory becomes the parameters of the server and guest modules, validated
with the same specs the modules use, every error naming the group and the field.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._ivshmem_protocol import MAX_VECTORS
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import (
    HUGEPAGE_BYTES, PRIVILEGED_USERS, GuestSpec, RegionSpec, ServerSpec, check_account, check_int, check_list, check_name,
    host_peer_account, prefixed)
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import (
    GROUP_GUEST_OPTIONS, GROUP_REGION_OPTIONS, GROUP_SERVER_OPTIONS, GUEST_DEFAULTS, SERVER_DEFAULTS)
from ansible_collections.ivshmem.fleet.plugins.module_utils._placement import check_destination_pages, hugepage_need, place
from ansible_collections.ivshmem.fleet.plugins.module_utils._rules import shared_account
from ansible_collections.ivshmem.fleet.plugins.module_utils._sizes import parse_size
from ansible_collections.ivshmem.fleet.plugins.module_utils._state_machine import StateMachine

GROUP_KEYS = ('name', 'host', 'size', 'vectors', 'server', 'pin_ids', 'master', 'peers', 'migration_port',
              'peer_mode', 'peer_fallback', 'peer_unplug_timeout', 'host_peers', 'type', 'region', 'host_accounts',
              'hugepages')
HOST_PEER_KEYS = ('name', 'user')
GROUP_TYPES = ('doorbell', 'plain')
# A plain group has no server (ivshmem-plain: no doorbells, no IDs), a doorbell group no region.
PLAIN_ONLY = ('region', 'host_accounts')
DOORBELL_ONLY = ('server', 'vectors', 'pin_ids', 'host_peers')
PEER_MODES = ('restart', 'live')
PEER_FALLBACKS = ('none', 'restart')
DEFAULT_MIGRATION_PORT = 4444


def _only(prefix, data, allowed):
    if not isinstance(data, dict):
        raise ValidationError(prefix, 'must be a mapping')
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValidationError('%s.%s' % (prefix, unknown[0]), 'unknown option (known: %s)' % ', '.join(allowed))


def _mapping(field, value):
    """A mapping (None is an empty one), else a field-named error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(field, 'must be a mapping, not %s' % type(value).__name__)
    return value


def _choice(field, value, choices):
    if value not in choices:
        raise ValidationError(field, 'must be one of %s, not %r' % (', '.join(choices), value))
    return value


def overrides(field, value):
    """The options that differ on one host (``field``: server_overrides or guest_overrides), a
    mapping; None is none."""
    return _mapping(field, value)


def region_overrides(server_overrides):
    """Of a host's server overrides, those a plain group's region takes: where memory lives there."""
    return dict((key, value) for key, value in overrides('server_overrides', server_overrides).items()
                if key in ('memory_dir', 'shm_name'))


def relocated(guest, moved):
    """``guest``'s options with its plain devices' memory_path moved as ``moved`` ({path on the
    plan: path on this host}) says: a region that lives elsewhere on a host is mapped there."""
    devices = guest.get('ivshmem') if isinstance(guest, dict) else None
    if not moved or not isinstance(devices, list):
        return guest
    return dict(guest, ivshmem=[dict(device, memory_path=moved[device['memory_path']])
                                if isinstance(device, dict) and device.get('memory_path') in moved else device
                                for device in devices])


def region_moves(regions, server_overrides):
    """(the regions as they live on this host, {their path on the plan: their path here})."""
    here, moved = [], {}
    for region in regions:
        if not isinstance(region, dict):
            here.append(region)
            continue
        local = dict(region, **region_overrides(server_overrides))
        here.append(local)
        try:
            before, after = RegionSpec(region).memory_path(), RegionSpec(local).memory_path()
        except ValidationError:
            continue  # reported where the region is validated, naming its field
        if before != after:
            moved[before] = after
    return here, moved


def on_host(group, server_overrides=None, guest_overrides=None):
    """``group`` (as ivshmem.fleet.plan returns it) as it runs on one host: that host's
    overrides over its server's and every guest's options (a shallow merge, the override wins); a
    plain group's region takes those of where memory lives, and its guests map it there."""
    guest_overrides = overrides('guest_overrides', guest_overrides)
    here = dict(group, master=dict(group['master'], **guest_overrides),
                peers=[dict(peer, **guest_overrides) for peer in group.get('peers') or []])
    if group.get('region'):
        # Where this host keeps the memory (two hosts on one machine, say): its guests map it there.
        (here['region'],), moved = region_moves([group['region']], server_overrides)
        here.update(master=relocated(here['master'], moved), peers=[relocated(p, moved) for p in here['peers']])
    else:
        here['server'] = dict(group['server'], **overrides('server_overrides', server_overrides))
    return here


def _host_peers(where, group, server, pin_ids):
    """[(field, name, account)] of a group's host-side peers (ivshmem-fleet-peer): known by their
    accounts like guests, so only a builtin server with pinned IDs takes them."""
    peers = []
    for index, peer in enumerate(check_list(where + '.host_peers', group.get('host_peers'))):
        field = '%s.host_peers[%d]' % (where, index)
        _only(field, peer, HOST_PEER_KEYS)
        peer_name = check_name(field + '.name', peer.get('name'))
        peers.append((field, peer_name, prefixed(field, lambda: host_peer_account(peer, peer_name))))
    if peers and (server.get('implementation', SERVER_DEFAULTS['implementation']) != 'builtin' or not pin_ids):
        raise ValidationError(where + '.host_peers', 'host peers need the builtin server and pin_ids (each is known '
                              'by its account and pinned after the guests)')
    return peers


def normalize_group(index, group, hosts, layout, accounts=None):
    """One validated group: its server's (or, for a plain group, its region's) and guests' module
    parameters. ``accounts``: a dict to fill with {guest: (its field, the account it runs as)}."""
    where = 'groups[%d]' % index
    _only(where, group, GROUP_KEYS)
    name = check_name(where + '.name', group.get('name'))
    where = 'groups[%s]' % name
    host = group.get('host')
    if host not in hosts:
        raise ValidationError(where + '.host', '%r is not a host of the inventory' % (host,))
    plain = _choice(where + '.type', group.get('type', 'doorbell'), GROUP_TYPES) == 'plain'
    for key in (PLAIN_ONLY if not plain else DOORBELL_ONLY):
        if group.get(key) is not None:
            raise ValidationError('%s.%s' % (where, key), 'only for a %s group' % ('plain' if not plain else 'doorbell'))
    server = group.get('server') or {}
    _only(where + '.server', server, GROUP_SERVER_OPTIONS)
    server = dict(server)
    master = group.get('master')
    if not master:
        raise ValidationError(where + '.master', 'every group needs its master guest')
    peers = group.get('peers') or []
    if not isinstance(peers, list):
        raise ValidationError(where + '.peers', 'must be a list')
    size = group.get('size', SERVER_DEFAULTS['size'])
    hugepages = group.get('hugepages')  # its shared memory's page size (checked with its size, by its spec)
    vectors = None if plain else check_int(where + '.vectors', group.get('vectors', SERVER_DEFAULTS['vectors']), 1,
                                           MAX_VECTORS)
    pin_ids = group.get('pin_ids', True)
    peer_mode = _choice(where + '.peer_mode', group.get('peer_mode', 'restart'), PEER_MODES)
    peer_fallback = _choice(where + '.peer_fallback', group.get('peer_fallback', 'none'), PEER_FALLBACKS)
    unplug_timeout = check_int(where + '.peer_unplug_timeout', group.get('peer_unplug_timeout', 30), 1, 3600)
    region = dict(_mapping(where + '.region', group.get('region')), name=name, size=size)
    _only(where + '.region', region, GROUP_REGION_OPTIONS + ('name', 'size'))
    if hugepages:
        region['hugepages'] = hugepages
    region_spec = _region_spec(where, region, layout) if plain else None
    memory = region_spec.memory_path() if plain else None
    if plain and hugepages:
        region['memory_dir'] = region_spec.memory_dir  # its guests' devices name the file: the same path on its host
    guests = []
    for role, field, guest in [('master', where + '.master', master)] + \
            [('peer', '%s.peers[%d]' % (where, i), p) for i, p in enumerate(peers)]:
        _only(field, guest, GROUP_GUEST_OPTIONS)
        if plain:
            device = {'type': 'plain', 'memory_path': memory, 'size': size, 'role': role}
        else:
            device = {'server': name, 'role': role, 'vectors': vectors}
        if role == 'peer' and peer_mode == 'live':
            device['hotplug'] = True  # unplugged and plugged back when the group moves
        params = dict(guest, ivshmem=[device])
        spec = prefixed(field, lambda: GuestSpec(params, layout))
        guests.append((field, spec, params))
    host_peers = _host_peers(where, group, server, pin_ids)
    names = [spec.name for _field, spec, _params in guests]
    members = names + [peer_name for _field, peer_name, _user in host_peers]
    fields = dict([(spec.name, field) for field, spec, _params in guests] +
                  [(peer_name, field) for field, peer_name, _user in host_peers])
    kinds = dict([(member, 'guest') for member in names] + [(member, 'host peer') for member in members[len(names):]])
    for position, member in enumerate(members):
        if member in members[:position]:
            raise ValidationError(fields[member] + '.name', '%s %s appears twice in the group' % (kinds[member], member))
    # The server admits the group's guests and host peers only, known by their accounts (each its
    # own); a region's group holds its guests' accounts and its host accounts only.
    users = dict([(spec.name, spec.user) for _field, spec, _params in guests] +
                 [(peer_name, user) for _field, peer_name, user in host_peers])
    shared = shared_account(users)
    if shared:
        earlier, later, user = shared
        raise ValidationError(fields[later] + '.user', '%s %s runs as %s too: the server tells the guests apart by '
                              'their accounts, so each needs its own' % (kinds[earlier], earlier, user))
    if accounts is not None:
        accounts.update((member, (fields[member], user)) for member, user in users.items())
    port = check_int(where + '.migration_port', group.get('migration_port', DEFAULT_MIGRATION_PORT), 1024, 65535)
    result = {
        'name': name, 'host': host, 'type': 'plain' if plain else 'doorbell', 'vectors': vectors,
        'migration_port': port, 'master': guests[0][2], 'peers': [params for _f, _s, params in guests[1:]],
        'guest_names': names, 'guest_memory': sum(spec.memory for _f, spec, _p in guests) << 20,
        'peer_mode': peer_mode, 'peer_fallback': peer_fallback, 'peer_unplug_timeout': unplug_timeout,
        'server': None, 'region': None, 'ids': {}, 'host_peers': [], 'host_accounts': [],
        'hugepages': hugepages,
    }
    if plain:
        host_accounts = _host_accounts(where, group, users)
        region['members'] = [users[guest_name] for guest_name in names] + host_accounts
        # Its members are accounts checked already (the guests' specs, _host_accounts).
        result.update(region=region, size=region_spec.size, memory=memory, host_accounts=host_accounts)
        result['hugepage_need'] = hugepage_need_of(result)
        return result
    server_params = dict(server, name=name, size=size, vectors=vectors)
    if hugepages:
        server_params['hugepages'] = hugepages
    if server.get('implementation', SERVER_DEFAULTS['implementation']) == 'builtin':
        server_params['admit'] = list(members)
        named = dict((spec.name, spec.user) for _f, spec, params in guests if params.get('user'))
        named.update((peer_name, user) for _field, peer_name, user in host_peers)  # never a guest's default
        if named:
            server_params['accounts'] = named
    if pin_ids and server.get('implementation', SERVER_DEFAULTS['implementation']) == 'builtin':
        # Host peers after every guest: ID 0 stays the master's whoever connects first.
        server_params['pins'] = dict((member, peer_id) for peer_id, member in enumerate(members))
    spec = prefixed(where, lambda: ServerSpec(server_params, layout))
    result.update(server=server_params, size=spec.size, memory=spec.memory_path(),
                  ids=dict(server_params.get('pins', {})),
                  host_peers=[{'name': peer_name, 'user': user, 'id': server_params['pins'][peer_name]}
                              for _field, peer_name, user in host_peers])
    result['hugepage_need'] = hugepage_need_of(result)
    return result


def hugepage_need_of(group):
    """{page size: bytes} a group takes from a host's huge page pools: its shared memory on them
    (its server's or region's ``hugepages``) and its guests' RAM on them. Of a group as planned
    (its ``hugepage_need``), or as it runs on one host (``on_host``: a host whose overrides take
    its guests off huge pages needs none for them); guests' memory as GuestSpec counts it (whole MiB)."""
    memory = group.get('server') or group.get('region') or {}
    need = {memory['hugepages']: group['size']} if memory.get('hugepages') else {}
    for guest in [group['master']] + list(group.get('peers') or []):
        if guest.get('hugepages'):
            ram = parse_size(guest.get('memory') or GUEST_DEFAULTS['memory']) >> 20 << 20
            need[guest['hugepages']] = need.get(guest['hugepages'], 0) + ram
    return need


def _region_spec(where, region, layout):
    """A plain group's RegionSpec; an error names the group's field (its size, or its region's)."""
    try:
        return RegionSpec(region, layout)
    except ValidationError as exc:
        field = exc.field if exc.field in ('size', 'hugepages') else 'region.' + exc.field
        raise ValidationError('%s.%s' % (where, field), str(exc).split(': ', 1)[1])


def _host_accounts(where, group, users):
    """A plain group's host accounts (a Looking Glass client, say): they read and write its memory
    beside its guests, so none is a guest's account or a privileged one."""
    host_accounts = []
    for index, account in enumerate(check_list(where + '.host_accounts', group.get('host_accounts'))):
        field = '%s.host_accounts[%d]' % (where, index)
        account = check_account(field, account)
        if account in PRIVILEGED_USERS:
            raise ValidationError(field, '%s reads any file already' % account)
        guest = next((name for name, user in sorted(users.items()) if user == account), None)
        if guest is not None:
            raise ValidationError(field, '%s is the account of guest %s' % (account, guest))
        if account not in host_accounts:
            host_accounts.append(account)
    return host_accounts


class GroupPlan(StateMachine):
    """Validate every group, check the fleet-wide rules, and say which host runs what."""

    def __init__(self, params, layout, check_mode):
        super(GroupPlan, self).__init__(check_mode)
        self.groups = params.get('groups') or []
        self.hosts = params.get('hosts') or []
        if not isinstance(self.hosts, list):
            raise ValidationError('hosts', 'must be a list of inventory host names')
        self.running, self.moves = {}, {}
        for host, facts in _mapping('facts', params.get('facts')).items():
            where = 'facts.%s' % host
            facts = _mapping(where, facts)
            guests = _mapping(where + '.guests', facts.get('guests'))
            # Only a running master serves: paused, incoming or migrated ones are a move in between.
            self.running[host] = [name for name, guest in guests.items()
                                  if _mapping('%s.guests.%s' % (where, name), guest).get('state') == 'running']
            for group, record in _mapping(where + '.moves', facts.get('moves')).items():
                self.moves.setdefault(group, {})[host] = _mapping('%s.moves.%s' % (where, group), record)
        self.layout = layout
        self.facts = params.get('facts') or {}
        self.rollout = params.get('rollout')
        self.group, self.evacuate = params.get('group'), params.get('evacuate')
        self.destination = params.get('destination')

    def state_planned(self):
        if not isinstance(self.groups, list):
            raise ValidationError('groups', 'must be a list of groups')
        plan, seen_groups, seen_guests, fleet_accounts = [], {}, {}, {}
        for index, group in enumerate(self.groups):
            accounts = {}
            normalized = normalize_group(index, group, self.hosts, self.layout, accounts)
            where = 'groups[%s]' % normalized['name']
            if normalized['name'] in seen_groups:
                raise ValidationError(where + '.name', 'two groups are named %s' % normalized['name'])
            seen_groups[normalized['name']] = index
            for guest_name in normalized['guest_names'] + [peer['name'] for peer in normalized['host_peers']]:
                if guest_name in seen_guests:
                    raise ValidationError(where, '%s is also in group %s' % (guest_name, seen_guests[guest_name]))
                seen_guests[guest_name] = normalized['name']
            # Servers admit guests by account: two guests of the fleet under one account would
            # each be let into the other's group (X and x-4b68ab38 both map to ivg-x-4b68ab38).
            fleet_accounts.update((guest_name, user) for guest_name, (_field, user) in accounts.items())
            shared = shared_account(fleet_accounts)
            if shared:
                mine, other = shared[:2] if shared[0] in accounts else (shared[1], shared[0])
                raise ValidationError(accounts[mine][0] + '.user', 'guest %s runs as %s, as guest %s of group %s does: '
                                      'servers admit guests by account, so each needs its own (rename one, or give '
                                      'it a user)' % (mine, shared[2], other, seen_guests[other]))
            normalized['in_transition'] = self._transition(normalized['name'])
            normalized['current_host'] = self._current_host(normalized)
            plan.append(normalized)
        # A plain group's host account is nobody's guest or host peer: that QEMU or peer would open
        # the region too.
        runs_as = dict((user, (seen_guests[member], member)) for member, user in fleet_accounts.items())
        for group in plan:
            for index, account in enumerate(group['host_accounts']):
                if account in runs_as:
                    raise ValidationError('groups[%s].host_accounts[%d]' % (group['name'], index),
                                          '%s is the account of %s of group %s' % (account, runs_as[account][1],
                                                                                   runs_as[account][0]))
        by_host = dict((host, [g['name'] for g in plan if g['current_host'] == host]) for host in self.hosts)
        self.result.update(groups=plan, by_host=by_host, hugepages=host_hugepages(plan, self.hosts))
        if self.group is not None or self.evacuate is not None or self.destination is not None:
            self.result['moves'] = select_moves(plan, self.hosts, self.group, self.evacuate, self.destination, self.facts)
        if self.rollout is not None:
            self.result['rollout'] = place(plan, self.hosts, self.facts, self.rollout)

    def _transition(self, group):
        """A move of the group left open (journal steps per host), or None."""
        records = self.moves.get(group)
        if not records:
            return None
        first = records[sorted(records)[0]]
        return {'source': first.get('source'), 'destination': first.get('destination'),
                'steps': dict((host, record.get('step')) for host, record in records.items())}

    def _current_host(self, group):
        """Where the group serves from: the source of a move left open (its engine resolves it
        first), else the host whose running guests include its master, else the inventory's."""
        if group['in_transition'] and group['in_transition']['source']:
            return group['in_transition']['source']
        master = group['master']['name']
        serving = sorted(host for host, guests in self.running.items() if master in (guests or []))
        return serving[0] if serving else group['host']


def host_hugepages(plan, hosts):
    """{host: {page size: pages}} the groups serving from each host take from its pools (each
    group's need in whole pages): what the hypervisor role reserves there."""
    pages = dict((host, {}) for host in hosts)
    for group in plan:
        here = pages.setdefault(group['current_host'], {})
        for size, need in hugepage_need(group).items():
            here[size] = here.get(size, 0) - (-need // HUGEPAGE_BYTES[size])
    return pages


def move_source(group, destination):
    """The host a move of ``group`` (as planned) to ``destination`` runs from: where it serves now,
    except that a move away from the destination left open is resolved between the destination
    and that move's own destination."""
    source = group.get('current_host') or group.get('host')
    transition = group.get('in_transition') or {}
    if source == destination and transition.get('destination') not in (None, destination):
        source = transition['destination']
    return source


def select_moves(plan, hosts, group, evacuate, destination, facts=None):
    """The moves of the migrate playbook, decided here once: the group named ``group``, or every
    group serving from host ``evacuate``, to ``destination``. A group already on the destination
    moves only when an earlier move of it is in transition (the move resolves it first); those
    come after the others. Each move: its ``name``, ``source``, ``destination`` and ``group`` (as
    planned). Where ``facts`` show the destination's huge page pools, the groups' huge pages must
    be available there, all of them together."""
    if (group is None) == (evacuate is None):
        raise ValidationError('group', 'give either group (a group to move) or evacuate (a host to empty)')
    if destination not in hosts:
        raise ValidationError('destination', '%r is not a host of the inventory' % (destination,))
    if group is not None:
        chosen = [g for g in plan if g['name'] == group]
        if not chosen:
            raise ValidationError('group', 'no group named %s' % group)
    else:
        chosen = [g for g in plan if g['current_host'] == evacuate]
    selected = [g for g in chosen if g['current_host'] != destination] + \
        [g for g in chosen if g['current_host'] == destination and g['in_transition']]
    check_destination_pages(selected, destination, (facts or {}).get(destination))
    return [{'name': g['name'], 'source': move_source(g, destination), 'destination': destination, 'group': g}
            for g in selected]
