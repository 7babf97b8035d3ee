"""Agent for the hook tests: what a script sees of how it was started."""

import json
import sys

print(json.dumps({"argv": sys.argv, "file": __file__, "path0": sys.path[0], "name": __name__}))
print(json.dumps(sorted(k for k in globals() if k.startswith("__"))))


def fail(depth):
    if depth == 0:
        raise ValueError("agent failure")
    fail(depth - 1)


if "--fail" in sys.argv:
    fail(2)
