"""Agent for the hook tests: an open repairs a tamper, at most once a millisecond."""

import os
import sys
import time


def noop(*args):
    return None


original = sys.audit
vars(sys)["audit"] = noop  # around the module guard
time.sleep(0.01)  # past the interval since the last check
os.close(os.open(__file__, os.O_RDONLY))  # an open: checked, and repaired
print("a while after:", "restored" if sys.audit is original else "replaced")
