"""Providers' own SDKs against Portcullis, both ways.

For every preset with a Python SDK: the SDK's verifier must accept what `portcullis sign`
prints, and `portcullis verify` must accept a request the SDK signed (and refuse it once the
body is changed). Usage: interop.py PATH/TO/portcullis. Prints one line per check and the
SDK versions; exits 1 on any disagreement.
"""

import datetime
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from urllib.parse import parse_qsl

BIN = sys.argv[1]
WORK = tempfile.mkdtemp()
FAILED = []
PASSED = []


def filter_file(name, yaml):
    path = os.path.join(WORK, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(yaml)
    return path


def sign(path, body, ts, msg_id):
    """Headers (lower-case names) and the request target `portcullis sign` prints."""
    out = subprocess.run(
        [BIN, "sign", "--filter", path, "--body", body, "--timestamp", str(ts), "--id", msg_id],
        check=True, capture_output=True, text=True,
    ).stdout
    headers, target = {}, None
    for line in out.splitlines():
        name, _, value = line.partition(": ")
        if name == "path":
            target = value
        else:
            headers[name.lower()] = value
    return headers, target


def verify(path, target, headers, body):
    """`portcullis verify` of a raw request: True when accepted."""
    head = f"POST {target} HTTP/1.1\r\nHost: hooks.example.com\r\n"
    for k, v in headers.items():
        head += f"{k}: {v}\r\n"
    head += f"Content-Length: {len(body.encode())}\r\n\r\n"
    raw = os.path.join(WORK, "request.http")
    with open(raw, "wb") as f:
        f.write(head.encode() + body.encode())
    done = subprocess.run([BIN, "verify", "--filter", path, "--request", raw], capture_output=True, text=True)
    return done.returncode == 0, done.stdout.strip()


def check(what, ok, detail=""):
    (PASSED if ok else FAILED).append(what)
    print(f"{'ok  ' if ok else 'FAIL'} {what} {detail if not ok else ''}".rstrip())


def attempt(what, fn):
    try:
        fn()
        check(what, True)
    except Exception as e:  # noqa: BLE001 - an SDK's refusal is an exception
        check(what, False, f"{type(e).__name__}: {e}")


NOW = int(time.time())
BODY = json.dumps({"id": "evt_interop", "object": "event", "type": "interop.test", "data": {"n": 1}})


def standard_webhooks(preset, module, header_prefix):
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    path = filter_file(preset, f'name: {preset.replace("-", "_")}\npreset: {preset}\nsecrets: ["{secret}"]\n')
    Webhook = module.Webhook
    headers, _ = sign(path, BODY, NOW, "msg_interop")
    attempt(f"{preset}: SDK verifies sign", lambda: Webhook(secret).verify(BODY, headers))
    sig = Webhook(secret).sign("msg_sdk", datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc), BODY)
    sdk = {f"{header_prefix}-id": "msg_sdk", f"{header_prefix}-timestamp": str(NOW), f"{header_prefix}-signature": sig}
    target = f"/webhook/{preset.replace('-', '_')}"
    ok, out = verify(path, target, sdk, BODY)
    check(f"{preset}: verify accepts the SDK's signature", ok, out)
    ok, out = verify(path, target, sdk, BODY.replace("1", "2"))
    check(f"{preset}: verify refuses it on another body", not ok, out)


def stripe_checks():
    import stripe
    secret = "whsec_interop_stripe"
    path = filter_file("stripe", f'name: stripe\npreset: stripe\nsecrets: ["{secret}"]\n')
    headers, _ = sign(path, BODY, NOW, "unused")
    attempt("stripe: SDK verifies sign",
            lambda: stripe.Webhook.construct_event(BODY, headers["stripe-signature"], secret))
    v1 = stripe.WebhookSignature._compute_signature(f"{NOW}.{BODY}", secret)
    sdk = {"stripe-signature": f"t={NOW},v1={v1}"}
    ok, out = verify(path, "/webhook/stripe", sdk, BODY)
    check("stripe: verify accepts the SDK's signature", ok, out)
    ok, out = verify(path, "/webhook/stripe", sdk, BODY + " ")
    check("stripe: verify refuses it on another body", not ok, out)


def slack_checks():
    from slack_sdk.signature import SignatureVerifier
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    path = filter_file("slack", f'name: slack\npreset: slack\nsecrets: ["{secret}"]\n')
    headers, _ = sign(path, BODY, NOW, "unused")
    check("slack: SDK verifies sign", SignatureVerifier(secret).is_valid(
        BODY, headers["x-slack-request-timestamp"], headers["x-slack-signature"]))
    sig = SignatureVerifier(secret).generate_signature(timestamp=str(NOW), body=BODY)
    sdk = {"x-slack-request-timestamp": str(NOW), "x-slack-signature": sig}
    ok, out = verify(path, "/webhook/slack", sdk, BODY)
    check("slack: verify accepts the SDK's signature", ok, out)
    ok, out = verify(path, "/webhook/slack", sdk, BODY[:-1])
    check("slack: verify refuses it on another body", not ok, out)


def twilio_checks():
    from twilio.request_validator import RequestValidator
    token = "12345"
    public = "https://hooks.example.com/webhook/twilio"
    form_yaml = f'name: twilio\npreset: twilio\nsecrets: ["{token}"]\npublic_url: {public}\ncontent_types: [application/x-www-form-urlencoded]\n'
    json_yaml = f'name: twilio\npreset: twilio\nsecrets: ["{token}"]\npublic_url: {public}\n'
    form = "CallSid=CA123&From=%2B15550001111&Digits=1234&Digits=5678"
    params = {}
    for k, v in parse_qsl(form):
        params.setdefault(k, []).append(v)

    class Multi(dict):
        def getall(self, name):
            return self[name]

    path = filter_file("twilio_form", form_yaml)
    headers, _ = sign(path, form, NOW, "unused")
    check("twilio (form): SDK verifies sign",
          RequestValidator(token).validate(public, Multi(params), headers["x-twilio-signature"]))
    path = filter_file("twilio_json", json_yaml)
    headers, target = sign(path, BODY, NOW, "unused")
    url = "https://hooks.example.com" + (target or "")
    check("twilio (JSON): sign adds bodySHA256", target is not None and "bodySHA256=" in target, str(target))
    check("twilio (JSON): SDK verifies sign",
          RequestValidator(token).validate(url, BODY, headers["x-twilio-signature"]))

    path = filter_file("twilio_form", form_yaml)
    for algorithm in ["HMAC_SHA1", "HMAC_SHA256"]:
        sig = RequestValidator(token).compute_signature(public + "?x=1", Multi(params), algorithm)
        sdk = {"x-twilio-signature": sig, "content-type": "application/x-www-form-urlencoded",
               "x-twilio-webhooks-signature-settings": f"key=webhooks_sharedkey_1,algorithm={algorithm}"}
        ok, out = verify(path, "/webhook/twilio?x=1", sdk, form)
        check(f"twilio ({algorithm}): verify accepts the SDK's signature", ok, out)
        ok, out = verify(path, "/webhook/twilio?x=1", sdk, form + "&Extra=1")
        check(f"twilio ({algorithm}): verify refuses it on another body", not ok, out)
    body_hash = RequestValidator(token).compute_hash(BODY)
    url = f"{public}?bodySHA256={body_hash}"
    sig = RequestValidator(token).compute_signature(url, {})
    sdk = {"x-twilio-signature": sig, "content-type": "application/json"}
    path = filter_file("twilio_json", json_yaml)
    ok, out = verify(path, f"/webhook/twilio?bodySHA256={body_hash}", sdk, BODY)
    check("twilio (JSON): verify accepts the SDK's signature", ok, out)
    ok, out = verify(path, f"/webhook/twilio?bodySHA256={body_hash}", sdk, BODY.replace("1", "9"))
    check("twilio (JSON): verify refuses it on another body", not ok, out)


def main():
    import standardwebhooks.webhooks
    import svix.webhooks
    standard_webhooks("standard-webhooks", standardwebhooks.webhooks, "webhook")
    standard_webhooks("svix", svix.webhooks, "svix")
    stripe_checks()
    slack_checks()
    twilio_checks()
    versions = ", ".join(
        f"{p} {importlib.metadata.version(p)}"
        for p in ["standardwebhooks", "svix", "stripe", "slack_sdk", "twilio"]
    )
    print(f"SDK versions: {versions}")
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
