"""What the migration's verification costs: parallel chunked checksums of both sides' memory
against a sequential whole-file baseline, in the same process, on the same files.

Run: .cache/venv/bin/python bench/verify_cost.py [SIZE_MIB] (PYTHONPATH=.cache/collections)
"""
import hashlib
import os
import sys
import tempfile
import time
import zlib

from ansible_collections.ivshmem.fleet.plugins.module_utils._checksum import checksum_files


def sequential(paths, algorithm):
    """The baseline: one thread, one file after the other, one running hash."""
    start = time.monotonic()
    for path in paths:
        crc, digest = 0, None if algorithm == 'crc32' else hashlib.new(algorithm)
        with open(path, 'rb') as handle:
            for block in iter(lambda: handle.read(1 << 20), b''):
                if digest is None:
                    crc = zlib.crc32(block, crc)
                else:
                    digest.update(block)
    return time.monotonic() - start


def main():
    size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    directory = '/dev/shm' if os.access('/dev/shm', os.W_OK) else tempfile.gettempdir()
    paths = [os.path.join(directory, 'ivshmem-fleet-bench-%d-%s' % (os.getpid(), side)) for side in 'ab']
    data = os.urandom(1 << 20)
    try:
        for path in paths:
            with open(path, 'wb') as handle:
                for _mib in range(size_mib):
                    handle.write(data)
        print('%d MiB per side, 2 sides, %d cores' % (size_mib, os.cpu_count()))
        print('%-8s %14s %14s %8s' % ('hash', 'sequential s', 'parallel s', 'ratio'))
        for algorithm in ('crc32', 'sha1', 'sha256'):
            base = sequential(paths, algorithm)
            _sums, fast = checksum_files(paths, algorithm)
            print('%-8s %14.3f %14.3f %7.2fx' % (algorithm, base, fast, base / fast))
    finally:
        for path in paths:
            os.unlink(path)


if __name__ == '__main__':
    main()
