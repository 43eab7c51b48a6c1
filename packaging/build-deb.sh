#!/usr/bin/env bash
# Builds the Debian package target/debian/lockgate_<version>_<arch>.deb.
#
# 1. `cargo build --release`, then stages every file of the package under target/deb-assets/
#    (the units with ExecStart= at /usr/bin/lockgate, the man page and the shell completions
#    generated from the CLI's clap definitions by `lockgate man` / `lockgate completions`).
# 2. With cargo-deb installed (`cargo install cargo-deb`), `cargo deb --no-build` packs them
#    from [package.metadata.deb] in Cargo.toml; without it, dpkg-deb packs the same tree.
#
# Install: dpkg -i target/debian/lockgate_*.deb ; lockgate check --config /etc/lockgate/lockgate.toml
set -euo pipefail
cd "$(dirname "$0")/.."

# LOCKGATE_DEB_PROFILE=debug packs the debug build (CI: the tests already built it, and the
# package's files are what is checked, not the binary's speed); it always packs with dpkg-deb.
if [ "${LOCKGATE_DEB_PROFILE:-release}" = debug ]; then
  cargo build --locked
  bin=target/debug/lockgate
  export LOCKGATE_DEB_TOOL=dpkg-deb
else
  cargo build --release --locked
  bin=target/release/lockgate
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets"/{systemd,man,completions,doc}

for unit in lockgate.service lockgate@.service; do
  sed 's|/usr/local/bin/lockgate|/usr/bin/lockgate|g' "systemd/$unit" > "$assets/systemd/$unit"
done
"$bin" man | gzip -9n > "$assets/man/lockgate.1.gz"
"$bin" completions bash > "$assets/completions/lockgate"
"$bin" completions zsh > "$assets/completions/_lockgate"
"$bin" completions fish > "$assets/completions/lockgate.fish"
gzip -9n < README.md > "$assets/doc/README.md.gz"
printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: lockgate\n\nFiles: *\nLicense: Apache-2.0\n On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n' \
  > "$assets/doc/copyright"

mkdir -p target/debian
deb="target/debian/lockgate_${version}_${arch}.deb"
# LOCKGATE_DEB_TOOL=dpkg-deb forces the fallback even where cargo-deb is installed.
if [ "${LOCKGATE_DEB_TOOL:-}" != dpkg-deb ] && cargo deb --version >/dev/null 2>&1; then
  cargo deb --no-build --output "$deb"
  echo "built $deb (cargo deb)"
  exit 0
fi

# The same package with dpkg-deb: every file where [package.metadata.deb] puts it.
root=target/deb-root
rm -rf "$root"
put() { # mode source destination
  install -D -m "$1" "$2" "$root/$3"
}
put 0755 "$bin" usr/bin/lockgate
put 0644 "$assets/systemd/lockgate.service" usr/lib/systemd/system/lockgate.service
put 0644 "$assets/systemd/lockgate@.service" usr/lib/systemd/system/lockgate@.service
put 0644 systemd/lockgate.sysusers usr/lib/sysusers.d/lockgate.conf
put 0644 systemd/lockgate.tmpfiles usr/lib/tmpfiles.d/lockgate.conf
put 0644 config/installed/lockgate.toml etc/lockgate/lockgate.toml
put 0644 config/lockgate.toml usr/share/doc/lockgate/lockgate.toml
put 0644 config/prometheus/lockgate-alerts.yml usr/share/doc/lockgate/lockgate-alerts.yml
put 0644 config/grafana/lockgate.json usr/share/doc/lockgate/grafana-dashboard.json
put 0644 docs/deployment.md usr/share/doc/lockgate/deployment.md
put 0644 "$assets/doc/README.md.gz" usr/share/doc/lockgate/README.md.gz
put 0644 "$assets/doc/copyright" usr/share/doc/lockgate/copyright
put 0644 "$assets/man/lockgate.1.gz" usr/share/man/man1/lockgate.1.gz
put 0644 "$assets/completions/lockgate" usr/share/bash-completion/completions/lockgate
put 0644 "$assets/completions/_lockgate" usr/share/zsh/vendor-completions/_lockgate
put 0644 "$assets/completions/lockgate.fish" usr/share/fish/vendor_completions.d/lockgate.fish
mkdir -p "$root/DEBIAN"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
echo /etc/lockgate/lockgate.toml > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: lockgate
Version: $version
Architecture: $arch
Maintainer: lockgate developers <lockgate@localhost>
Installed-Size: $size
Depends: libc6, systemd
Section: net
Priority: optional
Description: lock-gated L4 proxy for broker pairs
 A broker's client port is open only while this node holds a distributed lock (a file lock
 in a shared folder, or ZooKeeper); the moment the lock is lost the port closes and every
 connection it carried is reset. Gives any unmodified broker Apache Artemis's Lock
 Coordinator: never two active nodes.
CONTROL
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "built $deb (dpkg-deb)"
