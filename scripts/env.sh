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
