#!/usr/bin/env python3
"""The device side: an app's key pair, and a decision signed as CONTRACT §5 says.

    device.py keygen KEY.pem              writes a P-256 private key; prints the base64
                                          SPKI DER public key to put in the challenge
    device.py decide --api URL --challenge-id ID --device-id D --key KEY.pem \
        --decision approve|deny [--payment AMOUNT CURRENCY PAYEE] [--number N]

The signature is base64 of the DER ECDSA P-256/SHA-256 signature over the UTF-8 string
`sca-v1|{challenge_id}|{decision}|{tx_digest}`, where tx_digest is the lowercase hex
SHA-256 of `{amount}|{currency}|{payee}` for a payment, else empty. A signed decision
needs no bearer token. `decide` retries while the challenge is not known yet (404), then
prints the answer and exits 0 on 200.
"""
import argparse
import base64
import hashlib
import json
import sys
import time
import urllib.error
import urllib.request

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def tx_digest(payment):
    if not payment:
        return ""
    amount, currency, payee = payment
    return hashlib.sha256(f"{amount}|{currency}|{payee}".encode()).hexdigest()


def signed_message(challenge_id, decision, payment):
    return f"sca-v1|{challenge_id}|{decision}|{tx_digest(payment)}".encode()


def keygen(path):
    key = ec.generate_private_key(ec.SECP256R1())
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    print(base64.b64encode(spki).decode())


def decide(a):
    with open(a.key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    decision = a.decision
    sig = key.sign(signed_message(a.challenge_id, decision, a.payment), ec.ECDSA(hashes.SHA256()))
    body = {"device_id": a.device_id, "decision": decision,
            "signature": base64.b64encode(sig).decode()}
    if a.number is not None:
        body["number"] = a.number
    url = f"{a.api}/v1/challenges/{a.challenge_id}/decision"
    deadline = time.monotonic() + a.timeout
    while True:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, answer = r.status, json.load(r)
        except urllib.error.HTTPError as e:
            status, answer = e.code, json.loads(e.read() or b"{}")
        if status == 404 and time.monotonic() < deadline:
            time.sleep(0.2)  # the challenge is still on its way through the broker
            continue
        print(json.dumps({"status": status, **answer}))
        return 0 if status == 200 else 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen")
    k.add_argument("path")
    d = sub.add_parser("decide")
    d.add_argument("--api", default="http://127.0.0.1:8080")
    d.add_argument("--challenge-id", required=True)
    d.add_argument("--device-id", required=True)
    d.add_argument("--key", required=True)
    d.add_argument("--decision", choices=["approve", "deny"], required=True)
    d.add_argument("--payment", nargs=3, metavar=("AMOUNT", "CURRENCY", "PAYEE"))
    d.add_argument("--number", type=int)
    d.add_argument("--timeout", type=float, default=15)
    a = ap.parse_args()
    if a.cmd == "keygen":
        keygen(a.path)
        return 0
    return decide(a)


if __name__ == "__main__":
    sys.exit(main())
