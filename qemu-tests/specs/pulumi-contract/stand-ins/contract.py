"""TEST STAND-IN library: what the stand-ins for Pulumi's images share.

The stand-ins (qemu-tests/specs/pulumi-contract) play `pulumi/migrations`, `pulumi/service` and
`pulumi/console` in a test build of images/pulumi-selfhosted. Each reads its environment as the
image it plays does (the variables, defaults and formats Pulumi's self-hosting documentation and
installers give; see the contract table in docs/ARCHITECTURE.md) and refuses to run, naming
every problem at once, when the appliance's units break that contract. They are never part of
a production image.
"""

import base64
import binascii
import json
import os
import socket
import ssl
import sys
import tempfile
import time


class Contract:
    """The checks of one stand-in: problems are collected, then reported together."""

    def __init__(self, image):
        self.image = image
        self.problems = []
        # What the stand-in saw (never a secret's value): logged, and served by the API's
        # /api/status so a test can tell what reached the container.
        self.facts = {}

    def log(self, message):
        print(f"{self.image} (TEST STAND-IN): {message}", file=sys.stderr, flush=True)

    def problem(self, message):
        self.problems.append(message)

    def get(self, name, default=None):
        value = os.environ.get(name)
        return default if value is None or value == "" else value

    def require(self, name, why):
        value = self.get(name)
        if value is None:
            self.problem(f"{name} is not set: {why}")
        return value

    def settle(self):
        """Exits with every problem found, or returns when there is none."""
        if not self.problems:
            return
        self.log(f"the environment breaks {self.image}'s contract ({len(self.problems)} problems):")
        for p in self.problems:
            print(f"  - {p}", file=sys.stderr, flush=True)
        sys.exit(2)

    def fatal(self, message):
        self.log(f"contract broken: {message}")
        sys.exit(2)


def host_port(value, default_port=None):
    """`host:port` as Pulumi writes endpoints; None when it is not one."""
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, default_port
    if not host or any(c in host for c in "/@ ") or port is None:
        return None
    try:
        number = int(port)
    except ValueError:
        return None
    return (host, number) if 0 < number < 65536 else None


def b64url_json(part):
    padded = part + "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def jwt_problem(value):
    """Why `value` is not a JWT (Pulumi's license key is one), or None."""
    parts = value.split(".")
    if len(parts) != 3 or not all(parts):
        return "is not a JWT (three base64url parts separated by dots)"
    try:
        header = b64url_json(parts[0])
        b64url_json(parts[1])
        base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
    except (ValueError, binascii.Error):
        return "is not a JWT (its header or payload is not base64url-encoded JSON)"
    if not isinstance(header, dict) or "alg" not in header:
        return "is not a JWT (its header names no `alg`)"
    return None


def pem_problem(value, label):
    """Why `value` is not PEM text of `label` (e.g. CERTIFICATE), or None."""
    text = value.strip()
    if os.path.isabs(text) or "\n" not in text:
        return "must be the PEM text itself, not a file name"
    if not text.startswith("-----BEGIN ") or not text.endswith("-----"):
        return "is not PEM text"
    if label and f"BEGIN {label}" not in text and not (label == "PRIVATE KEY" and "PRIVATE KEY-----" in text):
        return f"is not a PEM {label}"
    return None


def wait_for(contract, what, attempt, timeout):
    """Calls `attempt` until it returns without raising, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            return attempt()
        except Exception as e:  # every failure is retried until the deadline, then reported
            if str(e) != last:
                contract.log(f"waiting for {what}: {e}")
                last = str(e)
            time.sleep(2)
    contract.fatal(f"{what}: still failing after {timeout} s: {last}")


def mysql_connect(host, port, user, password, database, ca_pem=None, timeout=10):
    import pymysql

    ssl_context = None
    if ca_pem:
        # As Pulumi's services do with DATABASE_CA_CERTIFICATE: TLS, trusting that CA only.
        with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
            f.write(ca_pem)
        ssl_context = ssl.create_default_context(cafile=f.name)
    return pymysql.connect(
        host=host,
        port=port,
        user=user,
        password=password or "",
        database=database,
        ssl=ssl_context,
        connect_timeout=timeout,
        autocommit=True,
    )


def tcp_reachable(host, port, timeout=5):
    with socket.create_connection((host, port), timeout=timeout):
        return True
