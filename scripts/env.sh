# Sourced by the scripts: the project's own uv (installed by setup.sh into a tool venv under
# var/tools/, never into the system Python) comes first on PATH.
UV_TOOL_DIR="$PWD/var/tools/uv"
export PATH="$UV_TOOL_DIR/bin:$PATH"
# uv must use Debian's python3 (or the one already in .venv), never fetch an interpreter.
export UV_PYTHON_DOWNLOADS=never
# pip, uv and npm trust the system's certificate store (Debian's bundle plus the site's own
# CAs added with update-ca-certificates, e.g. a TLS-inspecting proxy), not only their own lists.
SYSTEM_CA=/etc/ssl/certs/ca-certificates.crt
if [ -f "$SYSTEM_CA" ]; then
  export PIP_CERT="${PIP_CERT:-$SYSTEM_CA}"
  export SSL_CERT_FILE="${SSL_CERT_FILE:-$SYSTEM_CA}"
  export NODE_EXTRA_CA_CERTS="${NODE_EXTRA_CA_CERTS:-$SYSTEM_CA}"
fi

UV_VERSION="0.13.9"
# uv: the one already on PATH, else a pinned uv in a venv of Debian's python3 (Debian's python3
# has no pip and refuses `pip install` outside a venv: PEP 668 "externally-managed-environment").
ensure_uv() {
  command -v uv >/dev/null 2>&1 && return 0
  echo "==> uv $UV_VERSION (venv $UV_TOOL_DIR)"
  rm -rf "$UV_TOOL_DIR"
  /usr/bin/python3 -m venv "$UV_TOOL_DIR"
  "$UV_TOOL_DIR/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  # So that the README's `uv run …` commands work in any shell, not only in these scripts.
  if [ "$(id -u)" -eq 0 ] && [ ! -e /usr/local/bin/uv ]; then
    ln -s "$UV_TOOL_DIR/bin/uv" /usr/local/bin/uv
  fi
}
