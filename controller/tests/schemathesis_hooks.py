"""Schemathesis hooks for tests/schemathesis.rs: give each request the credential its
operation takes, so the fuzzer gets past authentication and tries the bodies themselves.

- the JSON API: an operator's token (an admin's for creating bootstrap tokens);
- the check-in: a device's token, with that device's id in the body (else every body is
  refused as another device's before it is read);
- enrollment: the bootstrap token for half of the cases, none for the others (pairing codes);
- the dashboard: an operator's session cookie, and on its forms that session's CSRF token
  (except on logout, which would end the session for the rest of the run, and the live
  event stream, which never ends);
- /metrics: the metrics token;
- ids in paths: for half of the cases a real one (a device other than the one checking in,
  the rollout, a bootstrap token) and a real rollout action, so the acts themselves run.

Everything comes from the environment the Rust test sets (FLEET_FUZZ_*).

Two things are kept out of the requests, because they test the HTTP layer rather than the
API and are tested on their own in tests/hardening.rs:
- control characters in header and cookie values: such a request head is malformed, and the
  HTTP layer (hyper) refuses it with a bare 400 before any route sees it;
- following redirects: a form answers 303, and that 303 is what is checked against the
  document, not the page it leads to.
"""

import os
import random
import re

import requests
import schemathesis

ENV = os.environ

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_request = requests.Session.request


def _no_redirects(self, method, url, **kwargs):
    kwargs["allow_redirects"] = False
    return _request(self, method, url, **kwargs)


requests.Session.request = _no_redirects


def _clean(values):
    if not values:
        return values
    return {k: _CONTROL.sub("", v).strip(" \t") if isinstance(v, str) else v for k, v in values.items()}


def _real_ids(case, path):
    params = case.path_parameters
    if not params or random.random() < 0.5:
        return
    if "{action}" in path:
        params["action"] = random.choice(["pause", "resume", "abort", "promote"])
    if "id" in params:
        if "/rollouts/" in path:
            params["id"] = random.choice([ENV["FLEET_FUZZ_ROLLOUT"], "active"])
        elif "/bootstrap-tokens/" in path:
            params["id"] = ENV["FLEET_FUZZ_BOOTSTRAP_ID"]
        elif "/devices/" in path:
            params["id"] = random.choice(ENV["FLEET_FUZZ_DEVICE_IDS"].split(","))


def _bearer(case, token):
    headers = dict(case.headers or {})
    headers["Authorization"] = "Bearer " + token
    case.headers = headers


@schemathesis.hook
def before_call(context, case):
    case.headers = _clean(case.headers)
    case.cookies = _clean(case.cookies)
    path = case.operation.path
    _real_ids(case, path)
    method = case.operation.method.upper()
    if path.startswith("/api/") and path != "/api/v1/webhook":
        if path == "/api/v1/checkin":
            _bearer(case, ENV["FLEET_FUZZ_DEVICE_TOKEN"])
            if isinstance(case.body, dict):
                case.body["device_id"] = ENV["FLEET_FUZZ_DEVICE_ID"]
        elif path == "/api/v1/enroll":
            if random.random() < 0.5:
                _bearer(case, ENV["FLEET_FUZZ_BOOTSTRAP"])
            elif case.headers:
                case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
        elif path == "/api/v1/bootstrap-tokens" and method == "POST":
            _bearer(case, ENV["FLEET_FUZZ_ADMIN"])
        else:
            _bearer(case, ENV["FLEET_FUZZ_OPERATOR"])
    elif path == "/metrics":
        _bearer(case, ENV["FLEET_FUZZ_METRICS"])
    elif path not in ("/login", "/healthz", "/ui/events", "/api/v1/webhook") and not path.startswith("/assets/"):
        cookies = dict(case.cookies or {})
        cookies["fleet_session"] = ENV["FLEET_FUZZ_SESSION"]
        case.cookies = cookies
        if method == "POST" and path != "/logout" and isinstance(case.body, dict):
            case.body["csrf"] = ENV["FLEET_FUZZ_CSRF"]
