"""Each option is declared once (plugins/module_utils/_options.py) and every text that states it
agrees with that declaration: (a) each module's DOCUMENTATION (its fragments merged) with the
argument spec its main() builds, (b) each action plugin's documentation with the options it
accepts, (c) the roles' meta/argument_specs.yml (and defaults/main.yml) with the declarations of
the options they pass on, and the group_migrate role passes every option of its action. A
failure names the plugin or role and the option."""
import importlib
import os

import pytest
import yaml

from ansible_collections.ivshmem.fleet.plugins.module_utils import _options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PLUGINS = 'ansible_collections.ivshmem.fleet.plugins'
MODULES = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, 'plugins', 'modules'))
                 if name.endswith('.py') and not name.startswith('_'))
ACTIONS = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, 'plugins', 'action'))
                 if name.endswith('.py') and not name.startswith('_'))
# Documented options an action plugin sets itself for its module (not accepted from a task).
SET_BY_ACTION = {'migration_credentials': ('files',)}
# What the argument spec assumes when a key is not given.
IMPLIED = (('type', 'str'), ('required', False), ('default', None), ('choices', None), ('elements', None))


def documented_options(plugin):
    """The options of ``plugins/modules/<plugin>.py``'s DOCUMENTATION, its fragments merged."""
    module = importlib.import_module('%s.modules.%s' % (PLUGINS, plugin))
    doc = yaml.safe_load(module.DOCUMENTATION)
    options = dict(doc.get('options') or {})
    for fragment in doc.get('extends_documentation_fragment') or []:
        assert fragment.startswith('ivshmem.fleet.'), '%s: fragment %s is not this collection\'s' % (plugin, fragment)
        name, _dot, section = fragment[len('ivshmem.fleet.'):].partition('.')
        holder = importlib.import_module('%s.doc_fragments.%s' % (PLUGINS, name)).ModuleDocFragment
        fragment_options = yaml.safe_load(getattr(holder, (section or 'documentation').upper())).get('options') or {}
        both = sorted(set(fragment_options) & set(options))
        assert not both, '%s: %s documented both in the module and in fragment %s' % (plugin, ', '.join(both), fragment)
        options.update(fragment_options)
    return options


class _Built(Exception):
    pass


def module_argument_spec(plugin, monkeypatch):
    """The argument_spec ``plugins/modules/<plugin>.py``'s main() hands AnsibleModule."""
    module = importlib.import_module('%s.modules.%s' % (PLUGINS, plugin))
    built = {}

    def capture(argument_spec, **_kwargs):
        built.update(argument_spec)
        raise _Built()
    monkeypatch.setattr(module, 'AnsibleModule', capture)
    with pytest.raises(_Built):
        module.main()
    return built


def differences(where, documented, accepted, documented_by='the documentation', accepted_by='the argument spec'):
    """One line per option that differs: missing on a side, or a key (type, required, default,
    choices, elements, suboptions) that is not the same."""
    problems = []
    for name in sorted(set(documented) | set(accepted)):
        field = '%s: option %s' % (where, name)
        if name not in accepted:
            problems.append('%s is in %s, not in %s' % (field, documented_by, accepted_by))
            continue
        if name not in documented:
            problems.append('%s is in %s, not in %s' % (field, accepted_by, documented_by))
            continue
        doc, spec = documented[name] or {}, accepted[name] or {}
        for key, implied in IMPLIED:
            said, taken = doc.get(key, implied), spec.get(key, implied)
            if key == 'choices' and said is not None and taken is not None:
                said, taken = list(said), list(taken)
            if said != taken or type(said) is not type(taken) and None not in (said, taken):
                problems.append('%s: %s is %r in %s, %r in %s' % (field, key, said, documented_by, taken, accepted_by))
        if doc.get('suboptions') or spec.get('options'):
            problems += differences('%s.%s' % (where, name), doc.get('suboptions') or {}, spec.get('options') or {},
                                    documented_by, accepted_by)
    return problems


def test_the_plugins_are_found():
    assert {'guest', 'server', 'host', 'group_migrate', 'migrate', 'move_host', 'plan'} <= set(MODULES)
    assert set(ACTIONS) == {'group_migrate', 'migration_credentials', 'plan'}


@pytest.mark.parametrize('plugin', [m for m in MODULES if hasattr(
    importlib.import_module('%s.modules.%s' % (PLUGINS, m)), 'main')])
def test_module_documentation_matches_its_argument_spec(plugin, monkeypatch):
    """(a)"""
    problems = differences('module %s' % plugin, documented_options(plugin), module_argument_spec(plugin, monkeypatch))
    assert not problems, '\n'.join(problems)


@pytest.mark.parametrize('plugin', ACTIONS)
def test_action_documentation_matches_the_options_it_accepts(plugin):
    """(b) The options ansible-doc shows for an action (its module file's DOCUMENTATION) are the
    ones its ActionModule validates, declared in _options.py."""
    accepted = importlib.import_module('%s.action.%s' % (PLUGINS, plugin)).ActionModule.ARGUMENT_SPEC
    documented = dict((name, option) for name, option in documented_options(plugin).items()
                      if name not in SET_BY_ACTION.get(plugin, ()))
    problems = differences('action %s' % plugin, documented, accepted, accepted_by='the options the action accepts')
    assert not problems, '\n'.join(problems)


def _role(role, name):
    with open(os.path.join(ROOT, 'roles', role, name)) as handle:
        return yaml.safe_load(handle) or {}


# Role variables that are a module's or action's option under another name: {role: {variable:
# (declaration, option)}}. group_migrate passes every option of its action (group_migrate_NAME).
ROLE_OPTIONS = {
    'group_migrate': dict(('group_migrate_' + name, (_options.MOVE_ARGS, name)) for name in _options.MOVE_ARGS),
    'group_deploy': {},
    'hypervisor': {'hypervisor_group': (_options.CREDENTIALS_ARGS, 'group'),
                   'hypervisor_tls_dir': (_options.CREDENTIALS_ARGS, 'dest'),
                   'hypervisor_pki_dir': (_options.CREDENTIALS_ARGS, 'pki_dir'),
                   'hypervisor_hugepages_planned': (_options.HOST_ARGS, 'hugepages'),
                   'hypervisor_hugepages_spare': (_options.HOST_ARGS, 'hugepages_spare')},
}


@pytest.mark.parametrize('role', sorted(ROLE_OPTIONS))
def test_role_argument_specs_match_the_declarations(role):
    """(c) Each mapped role variable is documented with its option's type and default, and its
    defaults/main.yml value, where it has one (not a template), is that default."""
    specs = _role(role, 'meta/argument_specs.yml')['argument_specs']['main']['options']
    role_defaults = _role(role, 'defaults/main.yml')
    documented = dict((variable, specs[variable]) for variable in ROLE_OPTIONS[role] if variable in specs)
    declared = dict((variable, declaration[name]) for variable, (declaration, name) in ROLE_OPTIONS[role].items())
    problems = differences('role %s' % role, documented, declared, 'meta/argument_specs.yml', '_options.py')
    for variable, option in sorted(documented.items()):
        value = role_defaults.get(variable)
        if variable in role_defaults and '{{' not in str(value) and value != option.get('default'):
            problems.append('role %s: option %s is %r in defaults/main.yml, %r in meta/argument_specs.yml' % (
                role, variable, value, option.get('default')))
    assert not problems, '\n'.join(problems)


def test_the_group_migrate_role_passes_every_option_on():
    """The role's task gives the action every option it accepts, each from its role variable."""
    tasks = [task for task in _role('group_migrate', 'tasks/main.yml') if 'ivshmem.fleet.group_migrate' in task]
    assert len(tasks) == 1
    passed = tasks[0]['ivshmem.fleet.group_migrate']
    problems = ['role group_migrate: option %s is not passed on to ivshmem.fleet.group_migrate' % name
                for name in _options.MOVE_ARGS if name not in passed]
    problems += ['role group_migrate: option %s is passed from %r, not from group_migrate_%s' % (name, value, name)
                 for name, value in sorted(passed.items()) if 'group_migrate_%s ' % name not in str(value)]
    assert not problems, '\n'.join(problems)


def test_derived_field_lists_are_the_declared_ones():
    """The recorded fields and a group's keys come from the declarations, in their order."""
    from ansible_collections.ivshmem.fleet.plugins.module_utils._model import GuestSpec, ServerSpec
    assert GuestSpec.FIELDS == _options.GUEST_FIELDS
    assert ServerSpec.FIELDS == _options.SERVER_FIELDS
    assert set(_options.GUEST_FIELDS) | set(_options.GUEST_TASK_OPTIONS) == set(_options.GUEST_ARGS)
    assert set(_options.GROUP_GUEST_OPTIONS) < set(_options.GUEST_FIELDS)
    assert set(_options.GROUP_SERVER_OPTIONS) < set(_options.SERVER_FIELDS)
    assert set(_options.MOVE_HOST_OPTIONS) < set(_options.MOVE_ARGS)


def test_playbooks_and_roles_follow_one_runtime_directory_variable():
    """Every playbook and role takes the runtime directory from ivshmem_fleet_runtime_dir and
    leaves its default to the modules (_options.DEFAULT_RUNTIME_DIR): nowhere is it written out."""
    problems = []
    for top in ('playbooks', 'roles'):
        for directory, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for name in sorted(files):
                if not name.endswith(('.yml', '.yaml', '.j2')):
                    continue
                path = os.path.join(directory, name)
                with open(path) as stream:
                    for number, line in enumerate(stream, 1):
                        if _options.DEFAULT_RUNTIME_DIR in line.split('#')[0]:
                            problems.append('%s:%d: %s' % (os.path.relpath(path, ROOT), number, line.strip()))
    for role in ('group_deploy', 'hypervisor'):
        value = _role(role, 'defaults/main.yml')['%s_runtime_dir' % role]
        if value != '{{ ivshmem_fleet_runtime_dir | default(omit) }}':
            problems.append('role %s: %s_runtime_dir is %r, not the fleet variable' % (role, role, value))
    assert not problems, '\n'.join(problems)
