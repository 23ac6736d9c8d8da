"""A real SMTP server for Fleet's tests: aiosmtpd (from PyPI) on a loopback port.

aiosmtpd's own command line (`python -m aiosmtpd`) has STARTTLS and SMTPS but no way to accept
a login, so this starts the same `aiosmtpd.smtp.SMTP` server with a fixed user and password
when asked. Every message is stored twice in DIR: in the Maildir `DIR/maildir` by aiosmtpd's
`Mailbox` handler, and as `DIR/json/NNNN.json`, parsed by Python's RFC 5322 parser
(`email`, policy `default`) with what the session knew: envelope, TLS version, login.

  python fleet_smtpd.py --listen 127.0.0.1:PORT --dir DIR
      [--starttls CERT KEY | --smtps CERT KEY] [--auth USER PASSWORD]

It prints `listening` once the port accepts connections, and runs until killed.
"""

import argparse
import asyncio
import email
import json
import logging
import os
import ssl
import sys
from email import policy

from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Recorder(Mailbox):
    """aiosmtpd's Maildir handler, also writing each message as parsed JSON."""

    def __init__(self, directory):
        os.makedirs(os.path.join(directory, "json"), exist_ok=True)
        super().__init__(os.path.join(directory, "maildir"))
        self.json_dir = os.path.join(directory, "json")
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        answer = await super().handle_DATA(server, session, envelope)
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=policy.default)
        body = msg.get_body(preferencelist=("plain",))
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        login = None
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            login = session.auth_data.login.decode()
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "headers": [[k, str(v)] for k, v in msg.items()],
            "content_type": msg.get_content_type(),
            "body": body.get_content() if body is not None else "",
            "tls": ssl_object.version() if ssl_object is not None else None,
            "auth_user": login,
            "raw": raw.decode("utf-8", "replace"),
        }
        self.count += 1
        path = os.path.join(self.json_dir, "%04d.json" % self.count)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return answer


def authenticator_for(user, password):
    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return authenticate


def context(cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--smtps", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--auth", nargs=2, metavar=("USER", "PASSWORD"))
    a = p.parse_args()
    # aiosmtpd warns about its own deprecated attribute on every login; only errors matter here.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    host, _, port = a.listen.rpartition(":")
    handler = Recorder(a.dir)
    kwargs = {}
    if a.starttls:
        kwargs["tls_context"] = context(*a.starttls)
        kwargs["require_starttls"] = True
    if a.auth:
        kwargs["authenticator"] = authenticator_for(*a.auth)
        kwargs["auth_required"] = True
        # Over SMTPS the connection is TLS from the start; aiosmtpd only knows STARTTLS.
        kwargs["auth_require_tls"] = not a.smtps
    smtps = context(*a.smtps) if a.smtps else None
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(lambda: SMTP(handler, loop=loop, **kwargs), host=host, port=int(port), ssl=smtps)
    )
    print("listening", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
