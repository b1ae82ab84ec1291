"""What every benchmark prints: one markdown section for docs/benchmarks.md (bench/report.py
stores it in bench/results/NAME.md). The section says where and when it was measured, the exact
command, and its figures beside their baselines with the ratio; target verdicts are computed
from the same figures, so no number in the doc is written by hand.

Progress goes to stderr (``progress``): stdout is the section alone.
"""
import datetime
import os
import platform
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def progress(message):
    print(message, file=sys.stderr, flush=True)


def _first_line(argv):
    """The first line ``argv`` prints; 'unknown' if it prints nothing or cannot run."""
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
                              check=False).stdout.decode('utf-8', 'replace').strip().splitlines()[0]
    except (OSError, IndexError):
        return 'unknown'


def machine():
    """Cores, RAM, QEMU and kernel of this machine, in one line."""
    with open('/proc/meminfo') as handle:
        kib = int(next(line for line in handle if line.startswith('MemTotal:')).split()[1])
    qemu = _first_line(['qemu-system-x86_64', '--version']).replace('QEMU emulator version ', '')
    return '%d cores, %.0f GiB RAM, QEMU %s, kernel %s' % (os.cpu_count(), kib / (1 << 20), qemu, platform.release())


def command_line():
    """How this script was started, as typed from the repository's root."""
    python = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(REPO) else sys.executable
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
    path = os.environ.get('PYTHONPATH', '')
    prefix = 'PYTHONPATH=%s ' % (os.path.relpath(path, REPO) if path.startswith(REPO) else path) if path else ''
    return prefix + ' '.join(shlex.quote(part) for part in [python, script] + sys.argv[1:])


def header(title, runs, setup=''):
    """The section's title and where, when, how it was measured."""
    commit = _first_line(['git', 'rev-parse', '--short', 'HEAD'])
    # What ran is the checkout: say so when the code measured differs from the commit named.
    if _first_line(['git', 'status', '--porcelain', '--untracked-files=no', '--', 'plugins', 'bench/*.py', 'tests']) != 'unknown':
        commit += ' with uncommitted changes'
    lines = ['## %s' % title, '',
             'Measured %s on %s, commit %s; median of %d run%s%s.' % (
                 datetime.date.today().isoformat(), machine(), commit, runs, '' if runs == 1 else 's', (' ' + setup) if setup else ''), '',
             '`%s`' % command_line(), '']
    return '\n'.join(lines)


def ratio(numerator, denominator):
    return '%.2f' % (numerator / denominator) if denominator else 'n/a'


def table(columns, rows):
    """A markdown table; the first column left-aligned, the others right-aligned."""
    lines = ['| %s |' % ' | '.join(columns), '|---|' + '---:|' * (len(columns) - 1)]
    lines += ['| %s |' % ' | '.join(str(cell) for cell in row) for row in rows]
    return '\n'.join(lines) + '\n'


def verdict(target, met, detail):
    """One target line: what it asks, met or missed (from this run's figures), and the figures."""
    return '- %s: **%s** (%s)' % (target, 'met' if met else 'missed', detail)
