#!/usr/bin/env python3
"""Checks Standard Webhooks signatures with the `standardwebhooks` library (PyPI), an
implementation that shares no code with nxgate's, for tests/outbox.rs.

Reads JSON lines on stdin, one delivery each:
    {"secret": "whsec_...", "id": "msg_...", "timestamp": "1700000000",
     "signature": "v1,...", "body_b64": "..."}
and prints one line per input line: "ok", or "fail: <reason>". Exits 0 when every line
verified, 1 when any failed (or was not valid input), 2 when the library is missing.

The library also checks the timestamp against the clock (5 minutes' tolerance), so the
lines must be checked soon after the deliveries they describe.
"""

import base64
import json
import sys

try:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError
except ImportError as e:  # pragma: no cover - the message is the point
    print(
        f"verify_webhook.py: cannot import standardwebhooks ({e}); "
        "install it with `bash scripts/install-deploy-tools.sh` (PyPI standardwebhooks==1.1.0)",
        file=sys.stderr,
    )
    sys.exit(2)


def check(line: str) -> str:
    try:
        d = json.loads(line)
        body = base64.b64decode(d["body_b64"], validate=True)
        headers = {
            "webhook-id": d["id"],
            "webhook-timestamp": str(d["timestamp"]),
            "webhook-signature": d["signature"],
        }
        Webhook(d["secret"]).verify(body, headers, json_parse=False)
        return "ok"
    except WebhookVerificationError as e:
        return f"fail: {e}"
    except Exception as e:  # malformed input counts as a failure, never a pass
        return f"fail: bad input ({type(e).__name__}: {e})"


def main() -> int:
    failed = 0
    checked = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        checked += 1
        verdict = check(line)
        if verdict != "ok":
            failed += 1
        print(verdict, flush=True)
    if checked == 0:
        print("verify_webhook.py: no lines to check", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
