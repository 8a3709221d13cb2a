#!/usr/bin/env bash
# The test command of the README, and what CI runs: installs the Debian packages the
# interoperability tests drive (swaks, openssl, Postfix and its smtp-sink/smtp-source, python3
# and its aiosmtpd, an unpacked Exim 4, an unpacked OpenSMTPD), Chromium for the status page and
# Prometheus (tests/observability.rs), then checks formatting and lints, and runs every test of
# the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v swaks >/dev/null 2>&1 || need+=(swaks)
# swaks's TLS support (--tls) is only a Recommends of its package.
perl -MNet::SSLeay -e1 >/dev/null 2>&1 || need+=(libnet-ssleay-perl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
{ [ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/postfix ]; } || need+=(postfix)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# aiosmtpd, the legacy backend of tests/interop_aiosmtpd.rs, for Debian's own /usr/bin/python3
# (the one the test runs; a python3 earlier on PATH, e.g. pyenv's, would not see the package).
{ [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1; } \
  || need+=(python3-aiosmtpd)
# The browser tests/status_page.rs loads the admin endpoint's status page in (headless).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# tests/observability.rs runs Debian's Prometheus server (its own config and data directory in a
# scratch directory, never the packaged service) and its promtool.
{ [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; } || need+=(prometheus)
# tests/packaging.rs verifies deploy/systemd's unit with systemd-analyze (nothing is started).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# src/listener.rs's test reads a listener's accept queue with ss.
command -v ss >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing test tools: ${need[*]}"
  # No system MTA is configured or started: the tests use Postfix's smtp-sink/smtp-source,
  # and tests/common/postfix_mta.rs runs Postfix itself (a sending MTA, a next hop, a legacy
  # backend) with its own main.cf, queue and data directories in a scratch directory
  # (`postfix -c DIR start`, as root), as the postfix user and postdrop group the package
  # creates.
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Exim 4, the legacy backend of tests/interop_exim.rs. Debian's exim4 packages conflict with
# postfix, so exim4-daemon-light is only unpacked under target/, never installed; the shared
# libraries it needs are installed, and the Debian-exim user its binary looks up is created.
exim_dir=target/interop-tools/exim4
if [ ! -x "$exim_dir/usr/sbin/exim4" ] || ! getent passwd Debian-exim >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "setting up Exim 4 in $exim_dir"
  $sudo apt-get update -qq
  libs=()
  for p in $(apt-cache depends exim4-daemon-light | awk '$1 == "Depends:" && $2 ~ /^lib/ { print $2 }'); do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || libs+=("$p")
  done
  if [ ${#libs[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${libs[@]}" >/dev/null
  fi
  getent passwd Debian-exim >/dev/null || $sudo useradd --system --badname --user-group \
    --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin Debian-exim
  if [ ! -x "$exim_dir/usr/sbin/exim4" ]; then
    debs=$(mktemp -d)
    (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root exim4-daemon-light)
    mkdir -p "$exim_dir"
    dpkg -x "$debs"/exim4-daemon-light_*.deb "$exim_dir"
    rm -rf "$debs"
  fi
fi

# OpenSMTPD, the legacy backend of tests/interop_opensmtpd.rs. Like Exim it conflicts with
# postfix, so Debian's opensmtpd is only unpacked under target/, never installed; its shared
# libraries are installed, and what its binary expects at compiled-in paths is created: the
# opensmtpd and opensmtpq users and groups, and the privilege-separation chroot
# /var/lib/opensmtpd/empty. smtpd creates its queue, /var/spool/smtpd, itself (root, 0711, the
# subdirectories opensmtpq's); its control socket is /var/run/smtpd.sock, so only one instance
# can run at a time: the tests take turns.
# OpenSMTPD 6.8, Debian 12's own, fails every TLS handshake it accepts when linked with OpenSSL
# 3 (its privilege-separated private key is lost: "missing private key", "EVP lib"; upstream
# issues 1171 and 1239), and the tests need its STARTTLS and implicit TLS: where the release's
# own opensmtpd is older than 7, the build of the release's backports archive is unpacked (7.4
# for Debian 12, the same libraries), fetched with a private apt state from the mirror the
# system already uses, its sources left as they are.
smtpd_dir=target/interop-tools/opensmtpd
smtpd_7() {
  local v
  v=$("$smtpd_dir/usr/sbin/smtpd" -h 2>&1 || true) # its usage, with the version, exits 1
  [[ "$v" =~ version:\ OpenSMTPD\ ([7-9]|[1-9][0-9]+)\. ]]
}
if ! smtpd_7 || ! getent passwd opensmtpd >/dev/null \
  || ! getent passwd opensmtpq >/dev/null || [ ! -d /var/lib/opensmtpd/empty ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "setting up OpenSMTPD in $smtpd_dir"
  $sudo apt-get update -qq
  # Its Depends that are libraries (libc6, libcrypt1, libdb5.3, libevent-2.1-7, libpam0g,
  # libssl3, zlib1g on Debian 12); the rest (adduser, debconf, ed, lsb-base) serve its
  # maintainer scripts, which never run here.
  libs=()
  for p in $(apt-cache depends opensmtpd | awk '$1 == "Depends:" && $2 ~ /^(lib|zlib)/ { print $2 }'); do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || libs+=("$p")
  done
  if [ ${#libs[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${libs[@]}" >/dev/null
  fi
  for u in opensmtpd opensmtpq; do
    getent group "$u" >/dev/null || $sudo groupadd --system "$u"
    getent passwd "$u" >/dev/null || $sudo useradd --system --gid "$u" --no-create-home \
      --home-dir /var/lib/opensmtpd/empty --shell /usr/sbin/nologin "$u"
  done
  $sudo install -d -o root -g root -m 0755 /var/lib/opensmtpd /var/lib/opensmtpd/empty
  if ! smtpd_7; then
    debs=$(mktemp -d)
    apt_opts=(-qq -o APT::Sandbox::User=root)
    candidate=$(apt-cache policy opensmtpd | awk '$1 == "Candidate:" { print $2 }')
    if ! [[ "$candidate" =~ ^([7-9]|[1-9][0-9]+)\. ]]; then
      codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
      repo=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' \
        | awk -v r="$codename" '$2 == r { print $1; exit }')
      echo "deb $repo $codename-backports main" >"$debs/sources.list"
      mkdir -p "$debs/lists/partial" "$debs/cache/archives/partial"
      apt_opts+=(-o Dir::Etc::SourceList="$debs/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o Dir::State::Lists="$debs/lists" -o Dir::Cache="$debs/cache")
      apt-get "${apt_opts[@]}" update
    fi
    (cd "$debs" && apt-get "${apt_opts[@]}" download opensmtpd)
    rm -rf "$smtpd_dir"
    mkdir -p "$smtpd_dir"
    dpkg -x "$debs"/opensmtpd_*.deb "$smtpd_dir"
    rm -rf "$debs"
    smtpd_7 || { echo "no OpenSMTPD 7 in $smtpd_dir" >&2; exit 1; }
  fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
