"""A legacy backend for the interoperability tests (tests/common/aiosmtpd.rs): aiosmtpd on
127.0.0.1 that stores the DATA of every message exactly as it arrived, after SMTP's own
dot-unstuffing (RFC 5321 section 4.5.2) and nothing else: no header added, no line end
changed, nothing parsed.

usage: aiosmtpd_backend.py DIR HOSTNAME [starttls|implicit CERT KEY]

Message n (from 1) is written as DIR/<n>.json (envelope, HELO, whether the session was
encrypted) and then DIR/<n>.eml (the DATA bytes): a reader that sees the .eml sees both whole.
Binds a free port and prints `listening <port>` once it accepts connections.
"""

import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP


class Store:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    def write(self, name, data):
        # Written under another name first, so that no reader sees half a file.
        path = os.path.join(self.directory, name)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.rename(path + ".tmp", path)

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        envelope_json = {
            "helo": session.host_name,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": server.transport.get_extra_info("ssl_object") is not None,
        }
        self.write(f"{self.count}.json", json.dumps(envelope_json).encode())
        self.write(f"{self.count}.eml", envelope.original_content)
        return "250 2.0.0 Stored"


async def main():
    directory, hostname = sys.argv[1], sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 else "none"
    context = None
    if mode != "none":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[4], sys.argv[5])
    store = Store(directory)

    def session():
        starttls = context if mode == "starttls" else None
        return SMTP(store, hostname=hostname, tls_context=starttls, enable_SMTPUTF8=True)

    implicit = context if mode == "implicit" else None
    server = await asyncio.get_running_loop().create_server(
        session, "127.0.0.1", 0, ssl=implicit
    )
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
