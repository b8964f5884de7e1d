#!/usr/bin/env bash
# Installs the prebuilt OHIF v3 viewer (npm package @ohif/app, its dist/ folder) into DEST.
# Usage: scripts/install-ohif.sh DEST
# Version-pinned and idempotent: nothing is fetched when DEST already holds this version.
# What is dropped (see shared/design/VIEWER.md): ort/ (AI tools, 136 MB),
# dicom-microscopy-viewer/ and the source maps; CT/MR/CR still draw without them.
set -euo pipefail

OHIF_VERSION="3.13.2"
DEST="${1:?usage: $0 DEST}"
MARKER="$DEST/.drimbox-ohif-version"

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$OHIF_VERSION" ] && [ -f "$DEST/index.html" ]; then
  echo "OHIF $OHIF_VERSION déjà installé dans $DEST"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "npm est introuvable : installez Node.js (paquet Debian nodejs, npm) pour installer OHIF" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "==> npm pack @ohif/app@$OHIF_VERSION"
(cd "$work" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
tarball="$(ls "$work"/ohif-app-*.tgz)"
tar -xzf "$tarball" -C "$work" package/dist
dist="$work/package/dist"
rm -rf "$dist/ort" "$dist/dicom-microscopy-viewer"
find "$dist" -name '*.map' -type f -delete
[ -f "$dist/index.html" ] || { echo "le paquet @ohif/app@$OHIF_VERSION n'a pas de dist/index.html" >&2; exit 1; }
echo "$OHIF_VERSION" > "$dist/.drimbox-ohif-version"

# Swap in the new tree at once, so that a running viewer never serves a half-copied folder.
mkdir -p "$(dirname "$DEST")"
staging="$DEST.new.$$"
rm -rf "$staging"
cp -a "$dist" "$staging"
rm -rf "$DEST.old.$$"
[ -e "$DEST" ] && mv "$DEST" "$DEST.old.$$"
mv "$staging" "$DEST"
rm -rf "$DEST.old.$$"
echo "OHIF $OHIF_VERSION installé dans $DEST ($(du -sh "$DEST" | cut -f1))"
