# Sourced by the scripts: the project's own uv (installed by setup.sh into a tool venv under
# var/tools/, never into the system Python) comes first on PATH.
UV_TOOL_DIR="$PWD/var/tools/uv"
export PATH="$UV_TOOL_DIR/bin:$PATH"
# uv must use Debian's python3 (or the one already in .venv), never fetch an interpreter.
export UV_PYTHON_DOWNLOADS=never
