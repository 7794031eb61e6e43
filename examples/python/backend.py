#!/usr/bin/env python3
"""A backend's side of sca-dispatch with pika: publish a challenge to sca.challenges with
publisher confirms, `reply_to` (a private queue) and `correlation_id`, then wait for its
outcome on that queue.

    backend.py --amqp URL [--exchange sca.challenges.in | --queue sca.challenges] \
        --challenge-id ID --user-id U \
        [--public-key B64] [--payment AMOUNT CURRENCY PAYEE] [--expect approved] [--timeout 30]

With the least-privilege users of deploy/rabbitmq/, backends publish to the ingress
exchange (`--exchange sca.challenges.in`); with a broker-wide user, to the queue through
the default exchange (`--queue`). Prints the outcome JSON; exits 0 when it arrived (and matches --expect, if given).
"""
import argparse
import datetime
import json
import sys
import time

import pika


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    ap.add_argument("--exchange", default="", help="ingress exchange (routing key: the queue)")
    ap.add_argument("--queue", default="sca.challenges")
    ap.add_argument("--challenge-id", required=True)
    ap.add_argument("--user-id", required=True)
    ap.add_argument("--fcm-token", default="example-fcm-token")
    ap.add_argument("--public-key", help="the device's base64 SPKI DER P-256 key")
    ap.add_argument("--payment", nargs=3, metavar=("AMOUNT", "CURRENCY", "PAYEE"))
    ap.add_argument("--expect")
    ap.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args()

    device = {"device_id": "d-pixel", "platform": "fcm", "token": a.fcm_token, "name": "Pixel"}
    if a.public_key:
        device["public_key"] = a.public_key
    challenge = {
        "v": 1,
        "challenge_id": a.challenge_id,
        "user_id": a.user_id,
        "kind": "login",
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
        "ttl_seconds": 120,
        "locale": "en",
        "devices": [device],
    }
    if a.payment:
        amount, currency, payee = a.payment
        challenge["kind"] = "payment"
        challenge["transaction"] = {"amount": amount, "currency": currency, "payee": payee}

    conn = pika.BlockingConnection(pika.URLParameters(a.amqp + ("&" if "?" in a.amqp else "?") + "socket_timeout=10"))
    ch = conn.channel()
    # A private, server-named queue for the outcome; gone when this connection closes.
    reply_queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
    ch.confirm_delivery()  # basic_publish now raises unless the broker confirms
    try:
        ch.basic_publish(
            exchange=a.exchange,
            routing_key=a.queue,
            body=json.dumps(challenge).encode(),
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                reply_to=reply_queue,
                correlation_id=a.challenge_id,
            ),
            mandatory=True,  # unroutable (no such queue) is an error, not a silent drop
        )
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as e:
        sys.exit(f"the broker did not take the challenge: {e!r}")
    print(f"published {a.challenge_id} (confirmed); waiting for its outcome on {reply_queue}", file=sys.stderr)

    deadline = time.monotonic() + a.timeout
    for method, props, body in ch.consume(reply_queue, auto_ack=True, inactivity_timeout=1):
        if time.monotonic() > deadline:
            break
        if method is None:
            continue
        if props.correlation_id != a.challenge_id:
            continue  # someone else's answer
        outcome = json.loads(body)
        print(json.dumps(outcome))
        conn.close()
        if a.expect and outcome.get("outcome") != a.expect:
            sys.exit(f"expected outcome {a.expect}, got {outcome.get('outcome')}")
        return
    conn.close()
    sys.exit(f"no outcome for {a.challenge_id} within {a.timeout:.0f} s")


if __name__ == "__main__":
    main()
