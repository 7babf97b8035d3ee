"""Agent for the hook tests: a Python child, started with and without env=."""

import os
import subprocess
import sys

child = "import os; print('child', os.getpid(), os.environ.get('CHILD_MARK'))"
plain = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
print("plain rc", plain.returncode, plain.stdout.strip(), plain.stderr.strip().splitlines()[-1:])
# An explicit environment without the hook's variables: the hook adds them back.
bare = subprocess.run(
    [sys.executable, "-c", child],
    env={"PATH": "/usr/bin:/bin"},
    capture_output=True,
    text=True,
)
print("bare rc", bare.returncode, bare.stderr.strip().splitlines()[-1:])
print("parent", os.getpid())
