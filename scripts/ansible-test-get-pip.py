"""Stand-in for ansible-test's pip bootstrap script, whose download host is out of reach here.

ansible-test runs it inside each fresh sanity venv with pip-install arguments; this installs
the interpreter's bundled pip (ensurepip) and then the asked packages from the package index.
"""
import subprocess
import sys

GET_PIP_ONLY = ('--no-setuptools', '--no-wheel')

subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q'] + [a for a in sys.argv[1:] if a not in GET_PIP_ONLY])
