#!/usr/bin/env bash
# CI: installs the package built by packaging/build-deb.sh on this machine, checks it the way
# an operator would, and removes it again (dpkg --purge; the lockgate system user stays, as
# sysusers users do).
#   - `lockgate check` passes on the installed /etc/lockgate/lockgate.toml, as root and as the
#     lockgate user (what ExecStartPre= runs), and prints nothing with --quiet;
#   - `systemd-analyze verify` is clean on the installed units;
#   - the man page and the bash completion are where man and bash look for them.
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(ls target/debian/lockgate_*.deb | tail -1)
trap 'dpkg --purge lockgate >/dev/null 2>&1 || true' EXIT

dpkg -i "$deb"
test -x /usr/bin/lockgate
/usr/bin/lockgate --version
/usr/bin/lockgate check --config /etc/lockgate/lockgate.toml >/dev/null
out=$(setpriv --reuid=lockgate --regid=lockgate --clear-groups \
  /usr/bin/lockgate check --quiet --config /etc/lockgate/lockgate.toml 2>&1)
[ -z "$out" ] || { echo "check --quiet as lockgate printed: $out" >&2; exit 1; }
test -d /var/lib/lockgate/locks
[ "$(stat -c %U /var/lib/lockgate/locks)" = lockgate ]
out=$(systemd-analyze verify lockgate.service lockgate@server0.service 2>&1) || {
  echo "$out" >&2; exit 1; }
if grep -q lockgate <<<"$out"; then echo "systemd-analyze verify: $out" >&2; exit 1; fi
test -s /usr/share/man/man1/lockgate.1.gz
zcat /usr/share/man/man1/lockgate.1.gz | grep -q '^\.TH lockgate 1'
grep -q '_lockgate' /usr/share/bash-completion/completions/lockgate
grep -q '^ExecStartPre=/usr/bin/lockgate check --quiet' /usr/lib/systemd/system/lockgate.service
echo "package: installed, checked and verified: $deb"
