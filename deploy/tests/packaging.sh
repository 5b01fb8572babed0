#!/usr/bin/env bash
# Packaging checks, run by `make test-packaging` (after `make deb`):
#  1. systemd-analyze verify on both units (with ExecStart pointed at the
#     built binaries, since they are not installed here);
#  2. `make install` into a scratch DESTDIR, twice: every file lands, and an
#     existing config is not overwritten;
#  3. as root: install the server package with dpkg, run the installed
#     pantry-server --version and pantry-admin --help, remove it again.
set -euo pipefail
cd "$(dirname "$0")/../.."
release=$PWD/target/release
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fail() { echo "packaging: FAILED: $*" >&2; exit 1; }

echo "== systemd-analyze verify"
mkdir "$scratch/units"
for unit in deploy/systemd/pantry-server.service deploy/systemd/pantry-client.service; do
    sed "s#/usr/bin/pantry-#$release/pantry-#" "$unit" > "$scratch/units/$(basename "$unit")"
done
# verify exits 0 on unknown directives but prints them: any output fails.
out=$(systemd-analyze verify --man=no "$scratch"/units/*.service 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify printed: $out"
echo "ok: both units verify"

echo "== make install DESTDIR=..."
dest="$scratch/root"
make -s install DESTDIR="$dest" PREFIX=/usr >/dev/null
for f in usr/bin/pantry-server usr/bin/pantry-client usr/bin/pantry-admin \
    etc/systemd/system/pantry-server.service etc/systemd/system/pantry-client.service \
    etc/pantry/server.yml etc/pantry/client.yml etc/logrotate.d/pantry \
    usr/share/man/man1/pantry-server.1 usr/share/man/man1/pantry-admin.1 usr/share/man/man1/pantry-client.1 \
    usr/share/bash-completion/completions/pantry-admin usr/share/zsh/site-functions/_pantry-admin \
    usr/share/fish/vendor_completions.d/pantry-admin.fish; do
    [ -e "$dest/$f" ] || fail "make install did not install /$f"
done
echo "# edited by the operator" >> "$dest/etc/pantry/server.yml"
make -s install DESTDIR="$dest" PREFIX=/usr >/dev/null
grep -q "edited by the operator" "$dest/etc/pantry/server.yml" || fail "make install overwrote /etc/pantry/server.yml"
"$dest/usr/bin/pantry-server" check-config -c deploy/server.yml >/dev/null || fail "installed check-config"
echo "ok: make install places every file and keeps existing configs"

echo "== dpkg -i pantry-server"
deb=$(ls -t target/debian/pantry-server_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || fail "no target/debian/pantry-server_*.deb (run make deb)"
if [ "$(id -u)" -ne 0 ]; then
    echo "skipped: installing a package needs root"
    exit 0
fi
if dpkg -s pantry-server >/dev/null 2>&1; then
    echo "skipped: pantry-server is already installed on this machine; not touching it"
    exit 0
fi
dpkg -i "$deb" >/dev/null || fail "dpkg -i $deb"
trap 'dpkg --purge pantry-server >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
/usr/bin/pantry-server --version | grep -q "pantry-server" || fail "installed pantry-server --version"
/usr/bin/pantry-admin --help | grep -q "client:create" || fail "installed pantry-admin --help"
getent passwd pantry >/dev/null || fail "the package did not create the pantry user"
[ -d /var/lib/pantry/server ] || fail "the package did not create /var/lib/pantry/server"
[ "$(stat -c %U /var/lib/pantry/server)" = pantry ] || fail "/var/lib/pantry/server is not owned by pantry"
echo "files installed by pantry-server:"
dpkg -L pantry-server | grep -v '/$' | sed 's/^/  /'
dpkg --purge pantry-server >/dev/null || fail "dpkg --purge pantry-server"
[ ! -e /usr/bin/pantry-server ] || fail "pantry-server still installed after removal"
echo "ok: the server package installs, runs and removes cleanly"
