"""Runs a command and succeeds only if it exits with the given status.

Usage: expect_exit.py STATUS CMD [ARGS...]
Forwards the command's stdout and stderr. A command killed by a signal
(a crash) never matches, so `expect_exit.py 1 ...` asserts "a clean error
exit", which lit's `not` cannot tell apart from a crash.
"""
import subprocess
import sys

want = int(sys.argv[1])
proc = subprocess.run(sys.argv[2:])
if proc.returncode != want:
    how = "signal %d" % -proc.returncode if proc.returncode < 0 else "status %d" % proc.returncode
    print("expect_exit: %s ended with %s, expected status %d" % (sys.argv[2], how, want), file=sys.stderr)
    sys.exit(1)
