#!/usr/bin/env bash
# Build the documentation site (mkdocs.yml, docs/) with --strict: every warning fails the build, so a broken
# link, a missing page or anchor, a missing included file or a broken reference in a rendered docstring is an
# error (exit status 1). The build itself is offline and imports neither lmdeq nor torch.
#
#   scripts/build_docs.sh              build into site/
#   scripts/build_docs.sh DIR          build into DIR
#   VENV=/path/to/env scripts/build_docs.sh   use another environment (default: ./.venv, created if missing)
#
# Installs requirements-docs.txt into the environment first when a pinned package is missing or at another
# version (the only step that needs the package index).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
SITE_DIR=${1:-site}

if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
fi
if ! "$PY" - requirements-docs.txt <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    from packaging.requirements import Requirement
except ImportError:
    sys.exit(1)
missing = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    req = Requirement(line)
    try:
        if version(req.name) not in req.specifier:
            missing.append(line)
    except PackageNotFoundError:
        missing.append(line)
if missing:
    print("build_docs: installing", ", ".join(missing), file=sys.stderr)
sys.exit(1 if missing else 0)
PYEOF
then
  "$PY" -m pip install --quiet -r requirements-docs.txt
fi

export NO_MKDOCS_2_WARNING=1   # mkdocs-material's notice about MkDocs 2.0 (not a warning of this build)
"$PY" -m mkdocs build --strict --site-dir "$SITE_DIR"
echo "build_docs: site written to $SITE_DIR (open $SITE_DIR/index.html, or run: $VENV/bin/mkdocs serve)"
