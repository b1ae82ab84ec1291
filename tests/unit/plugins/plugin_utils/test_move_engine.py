"""The move engine's decisions with scripted hosts (pure logic; the real-QEMU matrix is in
tests/integration/test_group_move.py)."""
import os
import socket
import subprocess
import time

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._move_engine import (
    GroupMove, HostUnreachable, LockHeld, MoveFailed, Safeguards, StepFailed, derived_timeouts, holder_alive,
    this_holder)

GROUP = {'name': 'g', 'size': 4 << 20, 'master': {'name': 'm', 'memory': '1G'}, 'peers': [{'name': 'p'}],
         'migration_port': 4444}


class Scripted:
    """A host that answers from a table of step -> result (or exception) and logs the steps."""

    def __init__(self, answers, log, name):
        self.answers, self.log, self.name = answers, log, name

    def call(self, params):
        self.log.append('%s:%s' % (params['step'], self.name))
        answer = self.answers.get(params['step'], {})
        if isinstance(answer, Exception):
            raise answer
        return dict(answer, host_time=0.0)


def view(step=None, guests='running', run_id='old', holder=None, **record):
    rec = dict(record, step=step, run_id=run_id, holder=holder or {'controller': 'elsewhere', 'pid': 1},
               lease_expired=True) if step else None
    states = guests if isinstance(guests, dict) else {'m': guests, 'p': guests}
    return {'record': rec, 'state': {'guests': states, 'server': 'started'}}


def engine(a, b, log):
    hosts = {'a': Scripted(a, log, 'a'), 'b': Scripted(b, log, 'b')}
    return GroupMove(GROUP, 'a', 'b', hosts, {'uri': 'tcp:x:1', 'relay_checksums': True}, run_id='new')


def test_timeouts_grow_with_the_sizes_and_a_slow_link():
    fast, checksum = derived_timeouts(GROUP, 10 << 30)
    slow, _c = derived_timeouts(GROUP, 1 << 20)
    assert 175 < fast < 190 and checksum == 30
    assert slow > fast + 2000  # 1 GiB at 1 MiB/s, twice
    assert derived_timeouts(GROUP, 1 << 20, timeout=50, checksum_timeout=9) == (50, 9)


def test_source_equal_to_destination_is_a_field_error():
    with pytest.raises(ValidationError) as info:
        GroupMove(GROUP, 'a', 'a', {'a': None}, {'uri': 'tcp:x:1'})
    assert info.value.field == 'destination'


def test_a_live_holder_on_this_controller_is_detected_by_pid():
    alive = {'holder': this_holder(), 'run_id': 'r1'}
    assert not holder_alive(alive)  # this process, but not one of its active runs
    child = subprocess.Popen(['sleep', '5'])
    try:
        holder = dict(this_holder(), pid=child.pid)
        from ansible_collections.ivshmem.fleet.plugins.plugin_utils._move_engine import _start_ticks
        holder['start_ticks'] = _start_ticks(child.pid)
        assert holder_alive({'holder': holder})
    finally:
        child.kill()
        child.wait()
    assert not holder_alive({'holder': holder})
    other = {'controller': socket.gethostname() + '-other', 'pid': os.getpid()}
    assert holder_alive({'holder': other, 'lease_expired': False})
    assert not holder_alive({'holder': other, 'lease_expired': True})


def test_a_live_run_elsewhere_makes_a_second_run_fail_before_any_change():
    log = []
    held = view('sending', lease_expired=False)
    held['record']['lease_expired'] = False
    with pytest.raises(LockHeld) as info:
        engine({'inspect': held}, {'inspect': view()}, log).run()
    assert 'old' in str(info.value) and sorted(log) == ['inspect:a', 'inspect:b']  # both at once, nothing else


def test_the_lock_is_the_injected_safeguards_one():
    """Safeguards are injected: without the lock, the same live run elsewhere is not seen and the
    group is claimed (tests/integration/move_lab.py runs the real matrix that way, to see it fail)."""
    class WithoutLock(Safeguards):
        def holder_alive(self, record):
            return False

    log = []
    held = view('sending', lease_expired=False)
    held['record']['lease_expired'] = False
    refused = StepFailed('the host refuses the claim')  # only the host's own compare-and-swap stops it now
    hosts = {'a': Scripted({'inspect': held, 'claim': refused}, log, 'a'), 'b': Scripted({'inspect': view()}, log, 'b')}
    move = GroupMove(GROUP, 'a', 'b', hosts, {'uri': 'tcp:x:1', 'relay_checksums': True}, run_id='new',
                     safeguards=WithoutLock())
    with pytest.raises(LockHeld) as info:
        move.run()
    assert str(info.value) == 'the host refuses the claim' and 'claim:a' in log


@pytest.mark.parametrize('dest_step, expected', [
    ('verified', ['commit:b', 'finish_source:a']),
    ('running', ['commit:b', 'finish_source:a']),
    ('loaded', ['rollback_destination:b', 'rollback_source:a']),
    (None, ['rollback_destination:b', 'rollback_source:a']),
])
def test_a_dead_runs_move_is_finished_only_when_the_destination_was_verified(dest_step, expected):
    log = []
    source = view('committing', guests={'m': 'migrated', 'p': 'paused'}, source='a', destination='b')
    source_claimed = dict(source, record=dict(source['record'], taken_over={'run_id': 'old'}))
    dest = view(dest_step, guests='incoming', source='a', destination='b') if dest_step else view(guests='absent')
    dest_claimed = dict(dest, record=dict(dest['record'] or {}, step=dest_step, taken_over={'run_id': 'old'}))
    a = {'inspect': source, 'claim': source_claimed}
    b = {'inspect': dest, 'claim': dest_claimed}
    with pytest.raises(MoveFailed):
        # After resolving, the scripted hosts still show the old state: the engine stops there.
        engine(a, b, log).run()
    steps = [s for s in log if not s.startswith(('inspect', 'claim', 'release'))]
    assert steps[:2] == expected


def test_destination_unreachable_after_committing_keeps_the_source_paused():
    log = []
    claimed = {'record': {'run_id': 'new', 'step': 'claimed'}}
    a = {'inspect': view(), 'claim': dict(view(), **claimed)}
    b = {'inspect': view(guests='absent'), 'claim': dict(view(guests='absent'), **claimed),
         'prepare_destination': {}, 'verify': {'record': {'verification': {'checksums': ['x']}}}}
    a['send'] = {'record': {'sent': {'checksums': ['x']}}}
    move = engine(a, b, log)

    class Down(Scripted):
        def call(self, params):
            if params['step'] in ('commit', 'inspect') and 'mark:a' in self.log:
                self.log.append('%s:b (down)' % params['step'])
                raise HostUnreachable('gone')
            return Scripted.call(self, params)

    class Source(Scripted):
        def call(self, params):
            if params['step'] == 'inspect' and 'mark:a' in self.log:
                self.log.append('inspect:a')
                return {'record': {'run_id': 'new', 'step': 'committing'}, 'host_time': 0.0}
            return Scripted.call(self, params)

    move.hosts['a'] = Source(a, log, 'a')
    move.hosts['b'] = Down(b, log, 'b')
    with pytest.raises(MoveFailed) as info:
        move.run()
    assert 'keeps it paused' in str(info.value)
    assert 'rollback_source:a' not in log


def test_a_stale_claim_on_a_host_that_runs_the_group_is_only_released():
    """A dead run claimed B (where the group runs) and did nothing else: resolving it must not
    touch B's running guests; the group is already moved."""
    log = []
    stale = view('claimed', guests='running', source='a', destination='b')
    taken = dict(stale, record=dict(stale['record'], taken_over={
        'run_id': 'old', 'step': 'claimed', 'source': 'a', 'destination': 'b'}))
    a = {'inspect': view(guests='absent'), 'claim': dict(view(guests='absent'), record={'run_id': 'new', 'step': 'claimed'}),
         'rollback_source': {'resumed': False}}
    b = {'inspect': stale, 'claim': taken, 'rollback_destination': {'discarded': False}}
    report = engine(a, b, log).run()
    assert report['outcome'].startswith('resolved: released the lock of run old')
    assert 'commit:b' not in log and 'finish_source:a' not in log


def test_an_open_move_is_resolved_between_the_hosts_it_named():
    """Asked to move to c while a move a -> b is open: nothing is decided with the wrong hosts."""
    log = []
    hosts = {name: Scripted({'inspect': view(guests='absent')}, log, name) for name in ('a', 'c')}
    held = view('sent', guests={'m': 'migrated', 'p': 'paused'}, source='a', destination='b')
    hosts['a'].answers = {'inspect': held, 'claim': dict(held, record=dict(held['record'], taken_over={
        'run_id': 'old', 'step': 'sent', 'source': 'a', 'destination': 'b'}))}
    hosts['c'].answers['claim'] = dict(view(guests='absent'), record={'run_id': 'new', 'step': 'claimed'})
    move = GroupMove(GROUP, 'a', 'c', hosts, {'uri': 'tcp:x:1'}, run_id='new')
    with pytest.raises(MoveFailed) as info:
        move.run()
    assert 'from a to b' in str(info.value)
    assert not [s for s in log if s.split(':')[0] in ('rollback_source', 'rollback_destination', 'commit')]


@pytest.mark.parametrize('option, value', [
    ('lease', -1), ('lease', 0), ('attempts', 0), ('timeout', 0), ('checksum_timeout', 0), ('max_bandwidth', -5),
    ('downtime_limit', -1), ('backoff', -1), ('start_timeout', 0), ('progress_interval', 0), ('attempts', True),
])
def test_a_bad_figure_is_refused_by_field_before_any_host_is_asked(option, value):
    """A negative lease would turn the cross-controller lock off; zero attempts or timeouts fail
    half-way. Refused when the engine is built: no step ran, so no lock was claimed."""
    log = []
    hosts = {'a': Scripted({}, log, 'a'), 'b': Scripted({}, log, 'b')}
    with pytest.raises(ValidationError) as info:
        GroupMove(GROUP, 'a', 'b', hosts, {'uri': 'tcp:x:1', option: value}).run()
    assert info.value.field == option and log == []


@pytest.mark.parametrize('group', [{'name': 'g'}, {'master': {'name': 'm'}}, ['g'], {'name': 'g', 'master': 'm'}])
def test_a_hand_written_group_is_refused_by_field_not_a_key_error(group):
    with pytest.raises(ValidationError) as info:
        GroupMove(group, 'a', 'b', {'a': None, 'b': None}, {'uri': 'tcp:x:1'})
    assert info.value.field == 'group'


class Clocked(Scripted):
    """A host whose clock is ``offset`` s ahead of the controller's and whose module reads it
    ``late`` s after the middle of its round trip (a module starts slowly on a slow host)."""

    def __init__(self, answers, log, name, offset, late):
        Scripted.__init__(self, answers, log, name)
        self.offset, self.late = offset, late

    def call(self, params):
        return dict(Scripted.call(self, params), host_time=time.time() + self.offset + self.late)

    def clock(self):
        now = time.time()
        return now, now + self.offset, now


def test_outages_compare_the_hosts_clocks_as_read_cheaply_not_from_a_module_s_round_trip():
    log = []
    hosts = {'a': Clocked({}, log, 'a', 0.0, 0.5), 'b': Clocked({}, log, 'b', 5.0, 2.0)}
    move = GroupMove(GROUP, 'a', 'b', hosts, {'uri': 'tcp:x:1', 'relay_checksums': True}, run_id='new')
    move._call('a', 'inspect')
    move._call('b', 'inspect')
    stopped = time.time()
    # The master stopped on a at `stopped` (a's clock) and resumed on b 300 ms later (b's clock).
    move._figures({'sent': {'stopped_at': stopped}}, {'resumed_at': stopped + 5.0 + 0.3})
    assert 290 <= move.report['master_outage_ms'] <= 310, move.report
    assert move.report['clock_uncertainty_ms'] < 10


def with_pools(view_, available, held=None, **reported):
    """``view_`` with the host's 2M pool (``available`` pages) and the group's pages it holds
    (``reported``: what else its inspect says, the group's need there say)."""
    pools = {'2M': {'page_size': 2 << 20, 'total': 64, 'free': available, 'reserved': 0, 'surplus': 0,
                    'available': available}}
    return dict(view_, hugepages=pools, state=dict(view_['state'], hugepages_held=held or {}), **reported)


@pytest.mark.parametrize('available, held, reported, refused', [
    (1, None, {}, True),  # 2 MiB of the 4 MiB shared memory
    (2, None, {}, False),
    (0, {'2M': 4 << 20}, {}, False),  # a resumed move: its memory is there already, holding the pages
    # The destination says what the group takes there (its overrides), over the plan's need.
    (1, None, {'hugepage_need': {}}, False),
    (4, None, {'hugepage_need': {'2M': 68 << 20}}, True),
])
def test_a_destination_without_the_groups_huge_pages_is_refused_before_anything_changes(available, held, reported,
                                                                                        refused):
    log = []
    group = dict(GROUP, hugepage_need={'2M': 4 << 20})
    claimed = {'record': {'run_id': 'new', 'step': 'claimed'}}
    dest = with_pools(view(guests='absent'), available, held, **reported)
    a = {'inspect': view(), 'claim': dict(view(), **claimed), 'prepare_destination': StepFailed('stop here')}
    b = {'inspect': dest, 'claim': dict(dest, **claimed), 'prepare_destination': StepFailed('stop here')}
    hosts = {'a': Scripted(a, log, 'a'), 'b': Scripted(b, log, 'b')}
    move = GroupMove(group, 'a', 'b', hosts, {'uri': 'tcp:x:1', 'relay_checksums': True, 'tls_dirs': None}, run_id='new')
    with pytest.raises(MoveFailed) as info:
        move.run()
    if not refused:
        assert 'prepare_destination:b' in log  # past the preflight
        return
    if reported:
        assert 'the group needs 68 MiB of 2M huge pages; b has 8 MiB available: 60 MiB short' in str(info.value)
        return
    assert str(info.value) == (
        'group g cannot move to b, so nothing was changed: the group needs 4 MiB of 2M huge pages; b has 2 MiB '
        'available: 2 MiB short (grow its pool: the host variable ivshmem_fleet_hugepages_spare, which the hypervisor '
        'role reserves, or ivshmem.fleet.host\'s hugepages)')
    assert info.value.report.get('refused')
    assert [s for s in log if not s.startswith(('inspect', 'claim', 'release'))] == []
    # Check mode predicts it the same.
    with pytest.raises(MoveFailed) as predicted:
        GroupMove(group, 'a', 'b', hosts, {'uri': 'tcp:x:1'}, run_id='other').predict()
    assert 'b has 2 MiB available: 2 MiB short' in str(predicted.value)
