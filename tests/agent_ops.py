"""What the e2e tests' small operation agents share.

An agent is `OPS_PRELUDE`, the test's operations (functions returning a dict
of fields) with an `OPS` table, then `OPS_MAIN`: each argument is one
operation `name=arg,arg`, and each prints one JSON line ({"op": ...,
"result": "ok" or the errno's name, ...}).  `MSGHDR_STRUCTS` is ctypes'
struct msghdr and struct mmsghdr, for agents that call sendmsg themselves.
"""

OPS_PRELUDE = r"""
import errno, json, sys


def report(op, **fields):
    print(json.dumps({"op": op, **fields}), flush=True)


def failure(exc):
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__
"""

OPS_MAIN = r"""
for spec in sys.argv[1:]:
    op, _, rest = spec.partition("=")
    args = rest.split(",") if rest else []
    try:
        report(op, result="ok", **OPS[op](*args))
    except Exception as exc:
        report(op, result=failure(exc))
"""

MSGHDR_STRUCTS = r"""
import ctypes


class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
"""
