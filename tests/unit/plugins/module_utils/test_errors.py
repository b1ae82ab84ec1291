"""One error root (module_utils/_errors.py): every error class the collection defines derives
from FleetError, a module reports any of them as its message, and the move's host code works
through the guest and server services, never through the modules' adapters."""
import importlib
import inspect
import os

import pytest

from ansible_collections.ivshmem.fleet.plugins.module_utils import _errors, _module
from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import FleetError, ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._state_machine import StateMachine

PACKAGE = 'ansible_collections.ivshmem.fleet.plugins'
PLUGINS = os.path.dirname(os.path.dirname(os.path.abspath(_errors.__file__)))


def plugin_modules():
    """Every Python module under plugins/ (modules, action plugins, module_utils, plugin_utils,
    the server package), by its import name."""
    names = []
    for directory, _dirs, files in os.walk(PLUGINS):
        for name in sorted(files):
            if name.endswith('.py'):
                relative = os.path.relpath(os.path.join(directory, name), PLUGINS)[:-len('.py')]
                names.append('.'.join([PACKAGE] + relative.split(os.sep)).replace('.__init__', ''))
    return sorted(names)


def defined_errors():
    """(module, class) of every exception class defined under plugins/."""
    found = []
    for name in plugin_modules():
        module = importlib.import_module(name)
        for _attr, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ == name and issubclass(value, BaseException):
                found.append((name, value))
    return found


def test_the_walk_finds_the_errors_of_every_part():
    modules = set(name.rsplit('.', 1)[1] for name, _cls in defined_errors())
    assert set(['_errors', '_guest', '_qmp', '_move_engine', '_pki', 'config']) <= modules


def test_every_error_class_derives_from_the_one_root():
    outside = ['%s.%s' % (name.rsplit('.', 1)[1], cls.__name__) for name, cls in defined_errors()
               if not issubclass(cls, FleetError)]
    assert not outside, '%d error classes not under FleetError: %s' % (len(outside), ', '.join(outside))


def test_a_validation_error_names_its_field():
    error = ValidationError('ivshmem[0].size', 'too big')
    assert isinstance(error, FleetError) and error.field == 'ivshmem[0].size' and str(error) == 'ivshmem[0].size: too big'


class ModuleExit(Exception):
    pass


class FakeModule:
    def __init__(self, tmp_path):
        self.params = {'runtime_dir': str(tmp_path)}
        self.check_mode = False
        self._diff = False
        self.failed = None

    def fail_json(self, **result):
        self.failed = result
        raise ModuleExit()

    def exit_json(self, **result):
        raise AssertionError('exited without failing: %r' % result)

    def warn(self, warning):
        pass


class SomeNewError(FleetError):
    """An error class no module names: reported all the same."""


def manager_failing_with(error, when):
    class Failing(StateMachine):
        def __init__(self, params, layout, check_mode):
            super(Failing, self).__init__(check_mode)
            if when == 'init':
                raise error

        def state_present(self):
            self.changed = True
            raise error
    return Failing


@pytest.mark.parametrize('when', ['init', 'run'])
@pytest.mark.parametrize('error', [SomeNewError('the guest went away'), ValidationError('name', 'bad name')],
                         ids=['FleetError', 'ValidationError'])
def test_run_manager_reports_any_fleet_error_as_a_message(tmp_path, error, when):
    os.chmod(str(tmp_path), 0o755)
    module = FakeModule(tmp_path)
    with pytest.raises(ModuleExit):
        _module.run_manager(module, manager_failing_with(error, when), 'present')
    assert module.failed['msg'] == str(error)
    if isinstance(error, ValidationError):
        assert module.failed['field'] == 'name'
    if when == 'run':
        assert module.failed['changed'] is True


@pytest.mark.parametrize('name', ['_move', '_move_steps', '_move_live_peers', '_move_journal'])
def test_the_move_works_through_the_services_not_the_modules_adapters(name):
    with open(os.path.join(PLUGINS, 'module_utils', name + '.py')) as source:
        text = source.read()
    assert [adapter for adapter in ('GuestManager', 'ServerManager') if adapter in text] == []
