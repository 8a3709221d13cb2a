#!/usr/bin/env python3
"""Split a perf profile into cost categories (scripts/profile.sh).

    scripts/perf-split.py PROFILE.data [COMM_REGEX [CPU_US_PER_SESSION [START]]]

Reads `perf report --sort comm,dso,sym`, keeps the samples of the processes (threads) whose
name matches COMM_REGEX, and sorts each symbol into one category: kernel (every kernel
symbol: syscalls, TCP/IP, scheduling, interrupts), crypto (aws-lc, ring or OpenSSL primitives),
rustls, alloc (malloc and free), memcpy, runtime (tokio, mio, the clock), smtp (the SMTP work:
smtp-core and its memchr scans, the sidecar's own code, nginx's mail module and event loop),
other. Prints each category's share. START (seconds on the profile's clock, as `perf script`
prints them): only the samples from then on count (scripts/profile.sh gives the moment the
load generator started, so that the peer's own start is left out).
"""
import re, subprocess, sys
from collections import defaultdict
path = sys.argv[1]
comm = sys.argv[2] if len(sys.argv) > 2 else None
per_session = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
start = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
args = ["perf", "report", "-i", path, "--sort", "comm,dso,sym", "--stdio", "-F", "overhead,comm,dso,sym"]
if start:
    args += ["--time", f"{start},"]
out = subprocess.run(args, capture_output=True, text=True).stdout
cats = defaultdict(float); total = 0.0; comms = defaultdict(float)
rules = [
    ("crypto", re.compile(r"aws_lc|^L(curve|bignum|p256|p384|sha)|ecp_nistz|sha256|sha512|aes|gcm|chacha|poly1305|x25519|curve25519|bignum|ring_core|ring::|OPENSSL|EVP_|ECDSA|BN_|ossl_|tls13_|ssl3_|SSL_|RSA|ec_GFp|x25519|ChaCha|CRYPTO_|gcm_|aesni|ecp_")),
    ("rustls", re.compile(r"rustls::|tokio_rustls")),
    ("alloc", re.compile(r"malloc|_int_free|cfree|realloc|calloc|free$|^free|tcache|je_|mi_")),
    # memchr is the SMTP work's own scanning (line ends, CR/LF/NUL in bodies).
    ("smtp", re.compile(r"memchr::|smtp_core|smtp_sidecar|ngx_mail|bytes::|nom::")),
    ("memcpy", re.compile(r"memmove|memcpy|memset|memcmp")),
    ("runtime", re.compile(r"tokio::|mio::|std::sys|parking_lot|futures|epoll|clock_gettime|__vdso|std::thread|ngx_event|ngx_process|ngx_epoll")),
    ("smtp", re.compile(r"ngx_")),
]
for line in out.splitlines():
    if not line.strip() or line.startswith("#"):
        continue
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(\S+)\s+\[(.)\]\s+(.*)", line)
    if not m:
        continue
    pct, c, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4), m.group(5).strip()
    if comm and not re.search(comm, c):
        continue
    comms[c] += pct
    total += pct
    if kind == "k" or dso.startswith("[kernel"):
        cat = "kernel"
    else:
        cat = "other"
        for name, rx in rules:
            if rx.search(sym):
                cat = name
                break
        if cat == "other" and ("libcrypto" in dso or "libssl" in dso):
            cat = "crypto"
    cats[cat] += pct
print("samples by process:", ", ".join(f"{c} {p:.1f}%" for c, p in sorted(comms.items(), key=lambda x: -x[1])[:6]))
for cat, pct in sorted(cats.items(), key=lambda x: -x[1]):
    share = pct / total
    us = f"  {share * per_session:6.1f} µs/session" if per_session else ""
    print(f"  {cat:8s} {share*100:5.1f}%{us}")
