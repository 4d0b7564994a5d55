#!/usr/bin/env python3
"""Timing and process bookkeeping for bench/run: `measure.py COMMAND ARGS...`. The commands of
each benchmark live with its report in bench/sections/; what they share is bench/common.py.
Every sample is appended as one JSON line to the file named by $BENCH_RESULTS.

  measure.py cmd LABEL [--runs R] [--warmup W] [--expect CODE] [--meta JSON] -- ARGV...
      Time ARGV (wall clock, and CPU time: user + system of it and the children it waited
      for) R times, stdout/stderr discarded; fail unless it exits CODE.
  measure.py reap MARKER
      SIGKILL every process whose command line contains MARKER or whose working directory
      is under it (a unique temp dir: only processes this benchmark started), and the
      `sleep 100000` children of those.
"""

import signal
import sys

from common import cmd_time, reap
from sections import SECTIONS

COMMANDS = {"cmd": cmd_time, "reap": lambda args: reap(args[0])}
for _section in SECTIONS:
    COMMANDS.update(_section.COMMANDS)


def usage():
    return "\n".join([__doc__.rstrip()] + [s.__doc__.split("\n\n", 1)[1].rstrip()
                                           for s in SECTIONS])


def main(argv):
    # SIGTERM (bench/run cleaning up) unwinds like an exception, so `finally` blocks stop
    # what this process started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if len(argv) < 2:
        sys.exit(usage())
    command = COMMANDS.get(argv[1])
    if command is None:
        sys.exit(f"measure.py: unknown command {argv[1]!r}\n{usage()}")
    command(argv[2:])


if __name__ == "__main__":
    main(sys.argv)
