#!/usr/bin/python3
"""Signed NAVER KMS API 2.0 calls (signature v2, the first account's access
key and secret key) for scripts/test-compose.sh. The secret key is read
from the environment (HSM_KMS_SECRET_KEY), never from the command line.

  naver_calls.py cluster ACCESS_KEY NODE1 NODE2 NODE3
      each node answers a signed GET /kms/v1/keys with 200; an AES256 key
      made on node 1 encrypts on node 3, and node 2 decrypts that
      ciphertext to the plaintext (one token, one store behind them all).
  naver_calls.py load ACCESS_KEY ADDR SECONDS
      a short load on one node: AES256 encrypt/decrypt and RSA2048
      sign/verify for SECONDS, each answer checked, plus refused calls (a
      ciphertext that does not decrypt, a bad signature) so that the error
      families have series too.

NODE / ADDR are host:port. Exits non-zero on the first unexpected answer.
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request


def b64(data):
    return base64.b64encode(data).decode()


class Naver:
    def __init__(self, addr, access_key, secret_key):
        self.addr, self.ak, self.sk = addr, access_key, secret_key

    def call(self, method, path, body=None, secret=None):
        ts = str(int(time.time() * 1000))
        msg = f"{method} {path}\n{ts}\n{self.ak}".encode()
        sig = b64(hmac.new((secret or self.sk).encode(), msg, hashlib.sha256).digest())
        req = urllib.request.Request(
            f"http://{self.addr}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "x-ncp-apigw-timestamp": ts,
                "x-ncp-iam-access-key": self.ak,
                "x-ncp-apigw-signature-v2": sig,
                "content-type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def ok(self, method, path, body=None):
        st, b = self.call(method, path, body)
        if st != 200:
            raise SystemExit(f"{self.addr}: {method} {path} answered {st}: {b}")
        return b["data"]

    def create_key(self, name, key_type):
        body = {"keyName": name, "keyType": key_type, "isAutoRotation": False}
        return self.ok("POST", "/kms/v1/keys", body)["keyTag"]


def cluster(ak, sk, nodes):
    clients = [Naver(a, ak, sk) for a in nodes]
    for i, c in enumerate(clients, 1):
        c.ok("GET", "/kms/v1/keys")
        print(f"node{i} ({c.addr}): signed GET /kms/v1/keys -> 200", file=sys.stderr)
    n1, n2, n3 = clients[0], clients[1], clients[2]
    tag = n1.create_key(f"cmp-{int(time.time()) % 100000}", "AES256")
    pt = b64(b"made on node 1, sealed on node 3, opened on node 2")
    ct = n3.ok("POST", f"/kms/v1/keys/{tag}/encrypt", {"plaintext": pt})["ciphertext"]
    back = n2.ok("POST", f"/kms/v1/keys/{tag}/decrypt", {"ciphertext": ct})["plaintext"]
    if back != pt:
        raise SystemExit(f"node2 decrypted node3's ciphertext to {back!r}, not {pt!r}")
    print(f"key {tag[:12]}...: made on node1, encrypted on node3, decrypted on node2", file=sys.stderr)


def load(ak, sk, addr, seconds):
    c = Naver(addr, ak, sk)
    suffix = int(time.time()) % 100000
    aes = c.create_key(f"obs-aes-{suffix}", "AES256")
    rsa = c.create_key(f"obs-rsa-{suffix}", "RSA2048")
    calls = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pt = b64(os.urandom(32))
        ct = c.ok("POST", f"/kms/v1/keys/{aes}/encrypt", {"plaintext": pt})["ciphertext"]
        if c.ok("POST", f"/kms/v1/keys/{aes}/decrypt", {"ciphertext": ct})["plaintext"] != pt:
            raise SystemExit("decrypt gave another plaintext")
        s = c.ok("POST", f"/kms/v1/keys/{rsa}/sign", {"data": pt})["signature"]
        c.ok("POST", f"/kms/v1/keys/{rsa}/verify", {"data": pt, "signature": s})
        calls += 4
    c.ok("GET", "/kms/v1/keys")
    # Refused calls: a ciphertext the token cannot decrypt, a bad signature.
    forged = "ncpkms:v1:" + b64(bytes(48))
    st, b = c.call("POST", f"/kms/v1/keys/{aes}/decrypt", {"ciphertext": forged})
    if st not in (200, 400):
        raise SystemExit(f"forged ciphertext: {st} {b}")
    st, b = c.call("GET", "/kms/v1/keys", secret="not-the-secret-key")
    if st != 401:
        raise SystemExit(f"bad signature answered {st}: {b}")
    print(f"load: {calls} calls in {seconds} s on {addr}, plus refused calls", file=sys.stderr)


def main():
    sk = os.environ.get("HSM_KMS_SECRET_KEY", "")
    if len(sys.argv) < 3 or not sk:
        raise SystemExit(__doc__)
    cmd, ak = sys.argv[1], sys.argv[2]
    if cmd == "cluster" and len(sys.argv) == 6:
        cluster(ak, sk, sys.argv[3:6])
    elif cmd == "load" and len(sys.argv) == 5:
        load(ak, sk, sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
