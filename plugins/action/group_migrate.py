# -*- coding: utf-8 -*-
# Copyright (c) ivshmem.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""ivshmem.fleet.group_migrate: the move engine on the controller, driving both hosts."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleError
from ansible.utils.display import Display

from ansible_collections.ivshmem.fleet.plugins.module_utils._errors import ValidationError
from ansible_collections.ivshmem.fleet.plugins.module_utils._groups import move_source
from ansible_collections.ivshmem.fleet.plugins.module_utils._options import DEFAULT_RUNTIME_DIR, DEFAULT_TLS_DIR as TLS_DIR, MOVE_ARGS
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._controller_action import ControllerAction
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._inventory_hosts import InventoryHost
from ansible_collections.ivshmem.fleet.plugins.plugin_utils._move_engine import (
    GroupMove, HostUnreachable, LockHeld, MoveFailed, StepFailed)

display = Display()


def _mib(value):
    return '%.1f MiB' % ((value or 0) / 1048576.0)


class ActionModule(ControllerAction):
    ARGUMENT_SPEC = MOVE_ARGS

    def act(self, args, result, task_vars):
        group = args['group']
        destination = args['destination']
        # Where from, as ivshmem.fleet.plan's moves say (a move left open is resolved first).
        source = args['source'] or move_source(group, destination)
        hosts = {}
        known = task_vars.get('hostvars') or {}
        for field, name in (('source', source), ('destination', destination)):
            if name not in known:
                return dict(result, failed=True, field=field, msg='%s: %r is not a host of the inventory; nothing was '
                                                                  'changed' % (field, name))
        try:
            for name in sorted(set((source, destination))):
                hosts[name] = InventoryHost(self, name, task_vars, 'ivshmem.fleet.move_host')
            for name, host in hosts.items():
                host.send_always(runtime_dir=host.var('ivshmem_fleet_runtime_dir') or DEFAULT_RUNTIME_DIR,
                                 server_overrides=host.var('ivshmem_fleet_server_overrides') or {},
                                 guest_overrides=host.var('ivshmem_fleet_guest_overrides') or {})
            address = hosts[destination].var('ivshmem_fleet_migration_address') or \
                hosts[destination].var('ansible_host') or destination
            options = dict((k, args[k]) for k in (
                'max_bandwidth', 'downtime_limit', 'timeout', 'checksum_timeout', 'checksum', 'start_timeout',
                'attempts', 'backoff', 'lease', 'progress_interval', 'lock_wait'))
            options['uri'] = 'tcp:%s:%d' % (address, group.get('migration_port') or 4444)
            options['relay_checksums'] = not args['verify_channel']
            if args['tls']:
                options['tls_dirs'] = {}
                for name, host in hosts.items():
                    directory = host.var('ivshmem_fleet_tls_dir') or TLS_DIR
                    if not isinstance(directory, str) or not directory.startswith('/'):
                        raise ValidationError('ivshmem_fleet_tls_dir', 'of %s must be an absolute path, not %r' % (
                            name, directory))
                    options['tls_dirs'][name] = directory
            move = GroupMove(group, source, destination, hosts, options, progress=self._show_progress)
            if self._task.check_mode:
                report = move.predict()
            else:
                report = move.run()
        except ValidationError as exc:
            return dict(result, failed=True, msg=str(exc), field=exc.field)
        except (MoveFailed, LockHeld) as exc:
            return dict(result, failed=True, msg=str(exc), move=getattr(exc, 'report', {}))
        except (HostUnreachable, StepFailed, AnsibleError) as exc:
            return dict(result, failed=True, msg='%s; run the same command again to resolve the move' % exc)
        except Exception as exc:  # pylint: disable=broad-except  # a message, never a traceback
            return dict(result, failed=True, msg='group %s: unexpected %s: %s; run the same command again to '
                                                 'resolve the move' % (group.get('name'), type(exc).__name__, exc))
        finally:
            for host in hosts.values():
                host.close()
        result.update(changed=report.pop('changed'), move=report, msg=self._summary(report))
        if self._task.diff:
            result['diff'] = {'before': {'group': group['name'], 'host': report.get('was_on', source)},
                              'after': {'group': group['name'], 'host': destination}}
        return result

    @staticmethod
    def _show_progress(progress):
        if progress.get('waiting_for'):
            display.display('%s: waiting for run %s (pid %s, at step %s) of this controller to finish' % (
                progress['group'], progress['waiting_for'], progress.get('pid'), progress.get('step')))
            return
        eta = progress.get('eta_s')
        display.display('%s: %s %% sent, %s left at %s Mbit/s%s' % (
            progress['group'], progress.get('percent'), _mib(progress.get('remaining_bytes')),
            round(progress.get('mbps') or 0, 1), ', about %s s to go' % eta if eta is not None else ''))

    @staticmethod
    def _summary(report):
        first = 'first %s; ' % report['resolved'] if report.get('resolved') else ''
        if report.get('outcome') != 'moved':
            return 'group %s: %s%s' % (report['group'], first, report.get('outcome'))
        started = report.get('peers_start_ms')
        trips = report.get('round_trips') or []
        # The outages compare two hosts' clocks: within how much they were compared is part of the figure.
        clocks = report.get('clock_uncertainty_ms')
        return ('group %s: %smoved %s -> %s: master out %s ms, peers out %s ms (%sQEMU: total %s ms, downtime %s ms)%s%s'
                % (report['group'], first, report['from'], report['to'], report.get('master_outage_ms'),
                   report.get('peer_outage_ms'), 'the hosts\' clocks compared within %s ms; ' % clocks if clocks else '',
                   report.get('total_time_ms'), report.get('downtime_ms'),
                   '; restarted peers ran %s ms after the master' % started if started is not None else '',
                   '; %d steps on the hosts, the longest %s' % (len(trips), ', '.join(
                       '%s on %s %.1f s' % tuple(t) for t in sorted(trips, key=lambda t: -t[2])[:3])) if trips else ''))
