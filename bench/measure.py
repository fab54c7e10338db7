"""Run a command and print, as JSON, its exit code, wall seconds, peak RSS in MB, and output tails.

    python bench/measure.py CMD [ARGS...]

A fresh, small process of its own, so that the peak RSS is the command's: Linux carries ru_maxrss
across fork and exec, so measured from the benchmark's own (large) process it would count the
benchmark's size at the fork.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

started = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(
    json.dumps(
        {
            "rc": proc.returncode,
            "s": time.perf_counter() - started,
            "mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "out": proc.stdout[-2000:],
            "err": proc.stderr[-2000:],
        }
    )
)
