# Makes the collection importable as ansible_collections.ivshmem.fleet from a plain checkout.
# Every test imports the collection by that name, as ansible-test units needs, but plain pytest
# (scripts/test.sh runs `python -m pytest tests/unit tests/integration` from the checkout) finds
# no ansible_collections package on sys.path: scripts/bootstrap.sh links the checkout into
# .cache/collections/ansible_collections/ivshmem/fleet, and this puts that directory first.
# ansible-test units, which runs from a tree already at .../ansible_collections/ivshmem/fleet,
# does not need it; the shim finds no .cache there and does nothing.
import os
import sys

_COLLECTIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.cache', 'collections')
if os.path.isdir(_COLLECTIONS) and _COLLECTIONS not in sys.path:
    sys.path.insert(0, _COLLECTIONS)
