#!/usr/bin/env bash
# Installs or upgrades DRIMbox as a system service from this checkout (docs/deploy.md):
#   - a `drimbox` system user; configuration in /etc/drimbox/ (written once, never overwritten);
#     state in /var/lib/drimbox/; logs to the journal;
#   - the code as a release under /opt/drimbox/releases/<version>-<digest> (a venv with the
#     locked dependencies of uv.lock), /opt/drimbox/current pointing at it; the previous releases
#     are kept for a rollback;
#   - the OHIF viewer in /opt/drimbox/ohif; the `drimbox` command in /usr/local/bin;
#   - the systemd unit drimbox.service (hardened, privileged ports through the unit), enabled and
#     (re)started; before an upgrade restarts the service, a backup of the database is written
#     to /var/lib/drimbox/backups/.
# Idempotent: run it again, nothing changes; run it from a newer checkout, it upgrades.
# Usage: sudo scripts/install.sh [--no-start] [--no-backup]
# DESTDIR=DIR stages the whole tree under DIR instead (tests, packaging): no user, no systemctl.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

START=1
BACKUP=1
for argument in "$@"; do
  case "$argument" in
    --no-start) START=0 ;;
    --no-backup) BACKUP=0 ;;
    *) echo "option inconnue : $argument (--no-start, --no-backup)" >&2; exit 2 ;;
  esac
done

DESTDIR="${DESTDIR:-}"
[ -z "$DESTDIR" ] || DESTDIR="$(realpath -m "$DESTDIR")"
PREFIX="$DESTDIR/opt/drimbox"
KEEP_RELEASES=3
RUNTIME_PACKAGES=(python3 python3-venv ca-certificates postgresql-client systemd)
real_install() { [ -z "$DESTDIR" ]; }
say() { echo "==> $*"; }

if real_install && [ "$(id -u)" -ne 0 ]; then
  echo "L'installation du service se fait en root : sudo $0 $*" >&2
  exit 1
fi

# -- system packages and uv (a real install only; a staged one uses this machine's) --------
if real_install; then
  missing=()
  for package in "${RUNTIME_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    . scripts/env.sh
  fi
fi
ensure_uv

# -- the service's user ------------------------------------------------------------------------
if real_install && ! id drimbox >/dev/null 2>&1; then
  say "utilisateur système drimbox"
  useradd --system --user-group --home-dir /var/lib/drimbox --no-create-home \
    --shell /usr/sbin/nologin --comment "DRIMbox" drimbox
fi

# -- the release: a venv with the locked dependencies, named by the content it was built from --
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)"
digest="$(find src pyproject.toml uv.lock -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
  | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)"
release="$version-$digest"
target="$PREFIX/releases/$release"
previous="$(readlink "$PREFIX/current" 2>/dev/null || true)"
if [ -f "$target/.complete" ]; then
  say "version $release déjà installée"
else
  say "version $release → $target"
  rm -rf "$target"  # an interrupted earlier run
  mkdir -p "$target"
  uv export --frozen --no-dev --no-emit-project --no-header --quiet -o "$target/requirements.txt"
  uv venv --quiet --python /usr/bin/python3 "$target/venv"
  uv pip install --quiet --python "$target/venv/bin/python" --require-hashes \
    -r "$target/requirements.txt"
  uv pip install --quiet --python "$target/venv/bin/python" --no-deps .
  cp -r docs "$target/docs"
  "$target/venv/bin/drimbox" --help >/dev/null
  touch "$target/.complete"
fi
if [ "$previous" != "releases/$release" ]; then
  ln -sfn "releases/$release" "$PREFIX/current.new"
  mv -T "$PREFIX/current.new" "$PREFIX/current"
fi
# Keep the newest releases (rollback), never the one in use.
find "$PREFIX/releases" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %f\n' | sort -rn \
  | tail -n +"$((KEEP_RELEASES + 1))" | while read -r _ old; do
    [ "$old" = "$release" ] || { say "ancienne version $old supprimée"; rm -rf "${PREFIX:?}/releases/$old"; }
  done

# -- the viewer: this checkout's OHIF (scripts/setup.sh) or npm --------------------------------
ohif_version() { cat "$1/.drimbox-ohif-version" 2>/dev/null || true; }
if [ -f var/ohif/index.html ] && [ "$(ohif_version var/ohif)" != "$(ohif_version "$PREFIX/ohif")" ]; then
  say "OHIF $(ohif_version var/ohif) → $PREFIX/ohif"
  rm -rf "$PREFIX/ohif.new"
  cp -a var/ohif "$PREFIX/ohif.new"
  rm -rf "$PREFIX/ohif"
  mv "$PREFIX/ohif.new" "$PREFIX/ohif"
elif [ ! -f "$PREFIX/ohif/index.html" ]; then
  ./scripts/install-ohif.sh "$PREFIX/ohif"
fi

# -- configuration, state, unit, command: written when absent or different --------------------
changed_files=()
put() {  # put MODE DEST < content; DEST (and its folder) untouched when already the same
  local mode="$1" dest="$2" staged
  staged="$(mktemp)"
  cat > "$staged"
  if [ -f "$dest" ] && cmp -s "$staged" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    rm -f "$staged"
    return
  fi
  mkdir -p "$(dirname "$dest")"
  install -m "$mode" "$staged" "$dest.new"
  mv -f "$dest.new" "$dest"
  rm -f "$staged"
  changed_files+=("$dest")
}
render() { sed "s|@PREFIX@|$PREFIX|g" "$1"; }

install -d -m 0750 "$DESTDIR/etc/drimbox" "$DESTDIR/var/lib/drimbox"
config="$DESTDIR/etc/drimbox/drimbox.toml"
if [ -e "$config" ]; then
  say "configuration existante conservée : $config"
else
  put 0640 "$config" < <(render deploy/drimbox.toml.in)
  say "configuration écrite : $config (à compléter : certificats, DMP, PSC, liste blanche)"
fi
put 0644 "$DESTDIR/etc/systemd/system/drimbox.service" < <(render deploy/drimbox.service.in)
put 0755 "$DESTDIR/usr/local/bin/drimbox" < <(render deploy/drimbox-cli.in)
if real_install; then
  chown root:drimbox /etc/drimbox "$config"
  chown drimbox:drimbox /var/lib/drimbox
fi
"$PREFIX/current/venv/bin/drimbox" config check "$config" >/dev/null \
  || { echo "corrigez $config puis relancez" >&2; exit 2; }
for file in "${changed_files[@]}"; do say "écrit : $file"; done

# -- the service --------------------------------------------------------------------------------
if ! real_install || [ ! -d /run/systemd/system ]; then
  say "installé sans démarrer (pas de systemd ici) : $PREFIX/current"
  exit 0
fi
systemctl daemon-reload
systemctl enable --quiet drimbox.service
if systemctl is-active --quiet drimbox.service; then
  if [ "$previous" != "releases/$release" ] && [ "$BACKUP" -eq 1 ]; then
    backup="/var/lib/drimbox/backups/avant-$release-$(date +%Y%m%d-%H%M%S).db"
    say "sauvegarde avant mise à jour : $backup"
    install -d -o drimbox -g drimbox -m 0750 /var/lib/drimbox/backups
    /usr/local/bin/drimbox db backup -o "$backup" \
      || { echo "sauvegarde impossible : mise à jour non redémarrée (--no-backup pour passer outre)" >&2; exit 1; }
  fi
  if [ "$previous" != "releases/$release" ] || [ "${#changed_files[@]}" -gt 0 ]; then
    say "redémarrage de drimbox.service (le schéma migre au démarrage)"
    systemctl restart drimbox.service
  fi
elif [ "$START" -eq 1 ]; then
  systemctl start drimbox.service
fi
systemctl --no-pager --lines=5 status drimbox.service || true
