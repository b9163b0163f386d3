#!/usr/bin/env bash
# Install Sherpa (CIAO's fitting package, PyPI `sherpa`) into a Python environment, for the `sherpa`
# marker tests and benchmarks/bench_fit.py.
#
# Usage: .ci/install-sherpa.sh /path/to/venv/bin/python        (default: .venv/bin/python of this repo)
#
# Idempotent: does nothing when `import sherpa` already works in that Python. Runs unattended (root or sudo).
# Sherpa has no Linux wheels on PyPI: pip builds the sdist with meson-python (about 3 min on 2 cores),
# which needs a C/C++ compiler plus bison, flex and libfftw3-dev from Debian.
#
# Why PATH is set below: sherpa's meson.build runs `scripts/get_sherpa_version`, whose shebang is
# `#!/usr/bin/env python3`. With pip's default ("virtual") build isolation, PYTHONPATH points at a
# sitecustomize.py written for the *venv's* interpreter; when `python3` on PATH is another interpreter
# (here the pyenv base Python), that sitecustomize empties sys.path while replaying the venv's .pth files
# (our editable install's finder), so the script dies with "No module named 'subprocess'" and pip reports
# "metadata-generation-failed". Putting the venv's bin/ first on PATH makes `python3` the venv's own
# interpreter, for which pip's sitecustomize works.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-$REPO/.venv/bin/python}"
SHERPA_SPEC="${SHERPA_SPEC:-sherpa==4.19.0}"

if [[ ! -x "$PY" ]]; then
    echo "install-sherpa: $PY is not an executable Python" >&2
    exit 2
fi
# Absolute path (without resolving the venv's symlink): the build below runs from an empty directory.
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
if "$PY" -c "import sherpa" >/dev/null 2>&1; then
    echo "install-sherpa: sherpa $("$PY" -c 'import sherpa; print(sherpa.__version__)' 2>/dev/null) already importable by $PY; nothing to do" >&2
    exit 0
fi

missing=()
for pkg in bison flex libfftw3-dev g++ gcc make; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
    echo "install-sherpa: apt-get install ${missing[*]}" >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

BIN="$(dirname "$PY")"
start=$(date +%s)
echo "install-sherpa: building $SHERPA_SPEC from source into $PY (a few minutes)" >&2
# Build from an empty directory (the repo root as cwd broke get_sherpa_version once here), and try twice:
# the first failure seen was not reproducible on a second run.
BUILD_CWD="$(mktemp -d)"
trap 'rm -rf "$BUILD_CWD"' EXIT
if ! (cd "$BUILD_CWD" && PATH="$BIN:$PATH" "$PY" -m pip install --disable-pip-version-check --progress-bar off "$SHERPA_SPEC" >&2); then
    echo "install-sherpa: first build failed; trying once more" >&2
    (cd "$BUILD_CWD" && PATH="$BIN:$PATH" "$PY" -m pip install --disable-pip-version-check --progress-bar off --no-cache-dir "$SHERPA_SPEC" >&2)
fi
# Importing sherpa must work now; it logs that XSPEC models are unavailable (expected without HEASoft).
version="$("$PY" -c "import sherpa; print(sherpa.__version__)" 2>/dev/null | tail -n 1)"
"$PY" -c "import sherpa.astro.ui" >/dev/null 2>&1 || { echo "install-sherpa: sherpa.astro.ui does not import" >&2; exit 1; }
echo "install-sherpa: sherpa $version installed in $(( $(date +%s) - start )) s" >&2
