"""Agent for the hook tests: one HTTP request to api.example.test, mapped to 127.0.0.1.

argv: PORT CLIENT METHOD   (CLIENT is urllib or requests)
Prints "STATUS <code>" or "DENIED <message>".
"""

import socket
import sys

port, client, method = int(sys.argv[1]), sys.argv[2], sys.argv[3]
_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):
    # No /etc/hosts edits: the test name resolves to the local test server.
    return _real_getaddrinfo("127.0.0.1" if host == "api.example.test" else host, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo
url = f"http://api.example.test:{port}/x"

if client == "urllib":
    import urllib.request

    try:
        request = urllib.request.Request(
            url, data=b"{}" if method == "POST" else None, method=method
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            print("STATUS", response.status)
    except PermissionError as exc:
        print("DENIED", exc)
else:
    import requests

    try:
        response = requests.request(
            method, url, data=b"{}" if method == "POST" else None, timeout=10
        )
        print("STATUS", response.status_code)
    except requests.exceptions.ConnectionError as exc:
        # urllib3 wraps every OSError; the hook's PermissionError is inside.
        cause = exc
        while cause is not None and not isinstance(cause, PermissionError):
            cause = cause.__context__ or (
                cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else None
            )
        print("DENIED", cause if cause is not None else exc)
