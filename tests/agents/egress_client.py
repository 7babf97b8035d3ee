"""Egress test agent: each argument is one attempt; prints one JSON line per attempt.

It is given no proxy settings: the clients find the proxy in the environment.
"""

import json
import os
import socket
import ssl
import sys
import urllib.request

CA = sys.argv[1]


def attempt(kind: str, arg: str) -> object:
    if kind == "urllib":
        context = ssl.create_default_context(cafile=CA)
        with urllib.request.urlopen(arg, context=context, timeout=10) as answer:
            return answer.read().decode()
    if kind == "requests":
        import requests

        return requests.get(arg, verify=CA, timeout=10).text
    if kind == "httpx":
        import httpx

        return httpx.get(arg, verify=ssl.create_default_context(cafile=CA), timeout=10).text
    if kind == "direct":
        host, port = arg.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=5).close()
        return "connected"
    if kind == "dns":
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01", (arg, 53)
        )
        udp.settimeout(3)
        return udp.recv(512).hex()
    if kind == "resolve":  # the agent's own name lookup (no DNS in its namespace)
        return str(socket.getaddrinfo(arg, 443, type=socket.SOCK_STREAM)[0][4])
    if kind in ("sni", "connect"):  # CONNECT to one host, then say another in the ClientHello
        connect_to, sni = arg.split(",")
        proxy = os.environ["HTTPS_PROXY"].rsplit(":", 1)
        sock = socket.create_connection((proxy[0].split("//")[1], int(proxy[1])), timeout=10)
        sock.sendall(f"CONNECT {connect_to} HTTP/1.1\r\nHost: {connect_to}\r\n\r\n".encode())
        head = sock.recv(4096).decode()
        if " 200 " not in head.split("\r\n")[0]:
            return head.split("\r\n")[0]
        context = ssl.create_default_context(cafile=CA)
        context.check_hostname = False
        with context.wrap_socket(sock, server_hostname=sni) as tls:
            return tls.recv(100).decode()
    raise ValueError(kind)


for item in sys.argv[2:]:
    kind, arg = item.split("=", 1)
    try:
        result = {"kind": kind, "ok": True, "data": attempt(kind, arg)}
    except Exception as exc:  # every failure is a result here
        result = {"kind": kind, "ok": False, "data": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
