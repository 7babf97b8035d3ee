"""Agent for the hook tests: tries to switch the hook off, then acts."""

import os
import sys

sys.addaudithook(lambda event, args: None)  # a second hook changes nothing


def noop(*args):
    return None


for label, attempt in (
    ("sys.audit =", lambda: setattr(sys, "audit", noop)),
    ("os.environ =", lambda: setattr(os, "environ", {"HOME": "/fake"})),
    ("del os.environ", lambda: delattr(os, "environ")),
):
    try:
        attempt()
        print(label, "accepted")
    except PermissionError:
        print(label, "refused")

# Around the module guard: repaired at the next C-level audit event.
vars(sys)["audit"] = noop

import agentsup.hooks._hook as hook_module  # noqa: E402

hook_module._installed = False  # module state switches nothing off

import urllib.request  # noqa: E402  (the import event repairs sys.audit)

try:
    urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:9/x", method="POST"))
    print("POST sent")
except PermissionError as exc:
    print("POST denied:", exc)

try:
    os.environ.get("SECRET_NAME")
    print("env read unchecked")
except PermissionError:
    print("env read denied")
