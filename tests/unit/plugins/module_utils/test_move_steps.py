"""The host side's step table (module_utils/_move.py) on a runtime directory with nothing
running: which journal step each step is refused from, and the steps that find nothing to do.
The steps' actions on real QEMU are in tests/integration/test_group_move.py."""
import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._model import Layout
from ansible_collections.ivshmem.fleet.plugins.module_utils._move import STEPS, TABLE, HostMove, MoveError, run_step
from ansible_collections.ivshmem.fleet.plugins.module_utils._move_journal import Journal, read_journal

GROUP = {'name': 'g', 'server': {'name': 'g'}, 'master': {'name': 'g-master'}, 'peers': [{'name': 'g-peer1'}]}


def at(layout, step, run_id='r1'):
    """The group's journal here at ``step``, written by run ``run_id``."""
    Journal(layout, 'g', run_id, {}).write(step)


def call(layout, step, run_id='r1', **params):
    return run_step(dict(params, group=GROUP, run_id=run_id, step=step), layout)


def test_every_step_has_one_row_and_move_host_offers_them_all():
    assert sorted(TABLE) == sorted(STEPS) and len(STEPS) == len(set(STEPS))
    assert [name for name in STEPS if not TABLE[name].changes] == ['inspect', 'progress']


def test_an_unknown_step_is_a_field_error(tmp_path):
    with pytest.raises(ValidationError) as info:
        HostMove(dict(group=GROUP, run_id='r1', step='teleport'), Layout(str(tmp_path)))
    assert info.value.field == 'step'


@pytest.mark.parametrize('journal, step, said', [
    ('prepared', 'commit', 'the destination was not verified by this run (step prepared)'),
    ('committing', 'rollback_source', 'the destination may already run the group (journal step committing)'),
    ('verified', 'rollback_destination', 'the destination was verified and may run; it is not discarded'),
    ('running', 'rollback_destination', 'the destination was verified and may run; it is not discarded'),
])
def test_a_step_is_refused_from_a_journal_step_it_is_not_allowed_from(tmp_path, journal, step, said):
    layout = Layout(str(tmp_path))
    at(layout, journal)
    with pytest.raises(MoveError) as info:
        call(layout, step)
    assert str(info.value).startswith(said)
    assert read_journal(layout, 'g')['step'] == journal  # nothing done


def test_commit_is_refused_on_another_runs_journal(tmp_path):
    layout = Layout(str(tmp_path))
    at(layout, 'loaded', run_id='other')
    with pytest.raises(MoveError) as info:
        call(layout, 'commit')
    assert 'not verified by this run (step loaded)' in str(info.value)


@pytest.mark.parametrize('step, answer, outcome', [
    ('rollback_source', {'resumed': False}, 'nothing to resume'),
    ('rollback_destination', {'discarded': False}, 'nothing to discard'),
])
def test_a_rollback_with_nothing_of_this_move_here_only_closes_the_journal(tmp_path, step, answer, outcome):
    layout = Layout(str(tmp_path))
    at(layout, 'claimed')
    result = call(layout, step)
    assert dict((k, result[k]) for k in answer) == answer
    record = read_journal(layout, 'g')
    assert (record['step'], record['outcome']) == ('done', outcome)


def test_a_rollback_leaves_another_runs_journal_as_it_is(tmp_path):
    layout = Layout(str(tmp_path))
    at(layout, 'sending', run_id='other')
    assert call(layout, 'rollback_destination')['discarded'] is False
    assert call(layout, 'release')['record']['run_id'] == 'other'
    assert read_journal(layout, 'g')['step'] == 'sending'


def test_release_and_mark_write_this_runs_journal(tmp_path):
    layout = Layout(str(tmp_path))
    at(layout, 'claimed')
    assert call(layout, 'mark', mark='committing')['record']['step'] == 'committing'
    assert call(layout, 'progress')['step'] == 'committing'
    record = call(layout, 'release', outcome='moved')['record']
    assert (record['step'], record['outcome']) == ('done', 'moved')
    assert [entry[0] for entry in record['history']] == ['claimed', 'committing', 'done']


def test_the_view_says_the_huge_pages_the_group_holds_here(tmp_path, monkeypatch):
    """Its memory file on huge pages while it exists, its running guests' RAM on them: a resumed
    move's destination counts them as free to the group (the engine's preflight)."""
    from ansible_collections.ivshmem.fleet.plugins.module_utils import _move
    memory = tmp_path / 'memory'
    memory.write_bytes(b'')
    guests = {'g-master': {'pid': 42, 'state': 'paused', 'record': {'spec': {'memory': 64, 'hugepages': '2M'}}},
              'g-peer1': {'pid': None, 'state': 'stopped', 'record': {'spec': {'memory': 64, 'hugepages': '2M'}}}}
    monkeypatch.setattr(_move, 'guest_status', lambda layout, name, registers: guests[name])
    monkeypatch.setattr(_move, 'server_status', lambda layout, name: {
        'state': 'stopped', 'memory': str(memory), 'spec': {'size': 4 << 20, 'hugepages': '2M'}})
    move = HostMove(dict(group=GROUP, run_id='r1', step='inspect'), Layout(str(tmp_path)))
    assert move.state()['hugepages_held'] == {'2M': (64 + 4) << 20}
    memory.unlink()
    guests['g-master']['record']['spec'].pop('hugepages')
    assert move.state()['hugepages_held'] == {}
