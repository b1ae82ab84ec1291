"""What the migration's verification costs: parallel chunked checksums of both sides' memory
against a sequential whole-file baseline, in the same process, on the same files. Prints its
markdown section for docs/benchmarks.md (bench/report.py), medians of RUNS rounds.

Run: PYTHONPATH=.cache/collections .cache/venv/bin/python bench/verify_cost.py [SIZE_MIB] [RUNS]
"""
import hashlib
import os
import statistics
import sys
import tempfile
import time
import zlib

from report_section import header, ratio, table

from ansible_collections.ivshmem.fleet.plugins.module_utils._checksum import ALGORITHMS, checksum_files


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
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    directory = '/dev/shm' if os.access('/dev/shm', os.W_OK) else tempfile.gettempdir()
    paths = [os.path.join(directory, 'ivshmem-fleet-bench-%d-%s' % (os.getpid(), side)) for side in 'ab']
    data = os.urandom(1 << 20)
    rows = []
    try:
        for path in paths:
            with open(path, 'wb') as handle:
                for _mib in range(size_mib):
                    handle.write(data)
        for algorithm in ALGORITHMS:
            base = statistics.median(sequential(paths, algorithm) for _run in range(runs))
            fast = statistics.median(checksum_files(paths, algorithm)[1] for _run in range(runs))
            rows.append((algorithm, '%.3f s' % base, '%.3f s' % fast, ratio(base, fast)))
    finally:
        for path in paths:
            os.unlink(path)
    print(header('Verification hashing: `bench/verify_cost.py`', runs, '(2 files of %d MiB in /dev/shm, as both sides of a '
                 'migration)' % size_mib))
    print('The migration\'s checksums (`_checksum.checksum_files`: 32 MiB chunks of both files hashed in parallel '
          'threads) against a sequential baseline (one thread, one file after the other, one running hash), in the '
          'same process on the same files. No target of its own: the move benchmarks count hashing in the outage.\n')
    print(table(('median', 'sequential (baseline)', 'parallel chunks', 'speed-up'), rows))


if __name__ == '__main__':
    main()
