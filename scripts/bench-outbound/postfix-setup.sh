#!/usr/bin/env bash
# A private Postfix instance as a TLS smart host for scripts/bench-outbound.sh: smtpd in
# plaintext on 127.0.0.1:PORT (the legacy MTA's side), store-and-forward, the smtp client out to
# relayhost [127.0.0.1]:NEXTHOP with smtp_tls_security_level = encrypt, a new TCP and TLS session
# per message (no connection cache, no TLS connection reuse, no TLS session cache).
# usage: postfix-setup.sh RUN PORT NEXTHOP_PORT
# Nothing outside RUN is touched; the caller starts `master -c RUN/etc -d` itself.
# Derived from ../shared/bench/peers/postfix/setup.sh (the inbound bench peer).
set -euo pipefail
RUN=$1 PORT=$2 NEXTHOP=$3
mkdir -p "$RUN/etc" "$RUN/spool" "$RUN/data"
chown postfix "$RUN/data"
cat > "$RUN/etc/main.cf" <<EOCF
compatibility_level = 3.6
queue_directory = $RUN/spool
data_directory = $RUN/data
maillog_file = $RUN/maillog
maillog_file_prefixes = $RUN
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.bench.test
mydomain = bench.test
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$NEXTHOP
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_banner = \$myhostname ESMTP
biff = no
smtputf8_enable = no
message_size_limit = 104857600
# In: plaintext, as from the legacy MTA (the sidecar's originate listener offers no TLS either).
smtpd_tls_security_level = none
# Out: TLS required, certificate not checked (the sidecar's policy "encrypt").
smtp_tls_security_level = encrypt
smtp_tls_loglevel = 0
# A new TCP connection and a full TLS handshake per message, as the sidecar does
# (one upstream session per transaction): no connection cache (on demand or per
# destination), no reuse of a TLS connection, no TLS session cache between smtp processes.
smtp_connection_cache_on_demand = no
smtp_connection_cache_destinations =
smtp_tls_connection_reuse = no
smtp_tls_session_cache_database =
# Capacity: one smtpd per client session; up to 100 parallel deliveries to the next hop.
default_process_limit = 2200
default_destination_concurrency_limit = 100
# Do not slow clients down when the queue manager falls behind (default 1s).
in_flow_delay = 0
EOCF
# master.cf: the stock services, none chrooted (the chroot would need a copy of /etc files).
cat > "$RUN/etc/master.cf" <<EOCF
127.0.0.1:$PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOCF
postfix -c "$RUN/etc" set-permissions create-missing
postfix -c "$RUN/etc" check
