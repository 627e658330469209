#!/usr/bin/env bash
# Before/after ratios of `geomix bench`, measured side by side: a baseline commit and this tree
# run alternately, ROUNDS times, under the same conditions, from the repository root:
#
#   scripts/bench_side_by_side.sh                      # baseline 0bbcb24, 3 rounds
#   BASE=<commit> ROUNDS=5 OUT=/tmp/sbs scripts/bench_side_by_side.sh
#   BENCH_ARGS="--rows 8 --vocab 4096 --repeat 1" scripts/bench_side_by_side.sh   # a quick try
#
# Each round runs, alternating which tree goes first:
#   1. `geomix bench $BENCH_ARGS --whole-process --json` (default: the documented 64 x 151,936
#      float32 CPU benchmark, every method, plus whole `geomix solve FILE` processes),
#   2. scripts/bench_small_calls.py --json (one solve with diagnostics at V = 10 ... 49,152 and the
#      batch, against dit's chernoff_information_pmf when dit is installed).
# The baseline is exported with `git archive` into a temporary folder and run with PYTHONPATH
# pointing at it (nothing in the repository changes). At the end a summary prints, per method,
# the median seconds of each tree and their ratio (baseline / this tree: above 1 = faster now),
# the "x ref" of each tree, and the small-call and dit ratios; raw JSON stays in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-0bbcb24}
ROUNDS=${ROUNDS:-3}
PY=$(command -v "${PYTHON:-python}")
case "$PY" in /*) ;; *) PY="$(pwd)/$PY" ;; esac
BENCH_ARGS=${BENCH_ARGS:-"--rows 64 --vocab 151936 --dtype float32 --repeat 3 --brentq-rows 2"}
OUT=${OUT:-$(mktemp -d -t geomix-side-by-side-XXXX)}
mkdir -p "$OUT"
BASE_DIR=$(mktemp -d -t geomix-baseline-XXXX)
trap 'rm -rf "$BASE_DIR"' EXIT
git archive "$BASE" | tar -x -C "$BASE_DIR"
HERE=$(pwd)
echo "side by side: baseline $BASE ($BASE_DIR) vs this tree ($(git rev-parse --short HEAD)" \
     "$(git diff --quiet || echo '+ uncommitted changes')), $ROUNDS rounds; JSON in $OUT" >&2
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)" >&2

run_tree() {  # label source-dir round
  local label=$1 dir=$2 round=$3
  echo "[$(date -u +%H:%M:%S)] round $round: $label bench" >&2
  # from inside the tree: `python -m` puts the working directory first on sys.path
  # shellcheck disable=SC2086
  (cd "$dir" && PYTHONPATH="$dir" "$PY" -m geomix_cli bench $BENCH_ARGS --whole-process --json) \
    > "$OUT/bench_${label}_${round}.json"
  echo "[$(date -u +%H:%M:%S)] round $round: $label small calls" >&2
  (cd "$dir" && PYTHONPATH="$dir" "$PY" "$HERE/scripts/bench_small_calls.py" --json) \
    > "$OUT/small_${label}_${round}.json"
}

for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    run_tree base "$BASE_DIR" "$round"; run_tree new "$HERE" "$round"
  else
    run_tree new "$HERE" "$round"; run_tree base "$BASE_DIR" "$round"
  fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)" >&2

"$PY" - "$OUT" "$ROUNDS" "$BASE" <<'PY'
import json, statistics, sys
from pathlib import Path

out, rounds, base = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
med = statistics.median


def load(kind, label):
    return [json.loads((out / f"{kind}_{label}_{r}.json").read_text()) for r in range(1, rounds + 1)]


def canonical(method):  # the reference rows were renamed ("seed 6.2" -> "the derivation's")
    return (method.replace("reference-bisection (seed 6.2, torch", "reference bisection (the "
                           "derivation's reference, torch")
            .replace("port of the seed", "port of the derivation's reference")
            .replace("+ seed reference", "+ the derivation's reference"))


bench = {label: load("bench", label) for label in ("base", "new")}
print(f"## geomix bench, side by side ({rounds} rounds; baseline {base})\n")
print("| method | device | baseline median s | this tree median s | baseline / this tree "
      "| x ref baseline | x ref this tree |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
rows = {}
for label, runs in bench.items():
    for run in runs:
        for r in run["results"]:
            key = (canonical(r["method"]), r["device"])
            rec = rows.setdefault(key, {"base": [], "new": [], "xref_base": [], "xref_new": []})
            rec[label].append(r["seconds"])
            rec["xref_" + label].append(r["speedup_vs_reference"] or float("nan"))
for (method, device), rec in rows.items():
    b = med(rec["base"]) if rec["base"] else float("nan")
    n = med(rec["new"]) if rec["new"] else float("nan")
    xb = med(rec["xref_base"]) if rec["xref_base"] else float("nan")
    xn = med(rec["xref_new"]) if rec["xref_new"] else float("nan")
    print(f"| {method} | {device} | {b:.4g} | {n:.4g} | {b / n:.2f} | {xb:.1f} | {xn:.1f} |")
print("\n## whole processes\n")
print("| process | baseline median s | this tree median s | baseline / this tree "
      "| x reference process, baseline | this tree |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for label in bench:
    for run in bench[label]:
        run["whole_process"] = {canonical(k): v for k, v in run.get("whole_process", {}).items()}
names = bench["new"][0].get("whole_process", {})
for name in names:
    b = [run["whole_process"][name]["seconds"] for run in bench["base"]]
    n = [run["whole_process"][name]["seconds"] for run in bench["new"]]
    xb = [run["whole_process"][name].get("speedup_vs_reference_process", float("nan"))
          for run in bench["base"]]
    xn = [run["whole_process"][name].get("speedup_vs_reference_process", float("nan"))
          for run in bench["new"]]
    print(f"| `{name}` | {med(b):.3g} | {med(n):.3g} | {med(b) / med(n):.2f} | {med(xb):.2f} "
          f"| {med(xn):.2f} |")
small = {label: load("small", label) for label in ("base", "new")}
print("\n## one solve with diagnostics per call (and dit)\n")
print("| rows x V | baseline full | this tree full | baseline / this tree | baseline alpha*+C "
      "| this tree alpha*+C | baseline / this tree | dit | dit / this tree full "
      "| dit / this tree alpha*+C | max abs dC dit (nats) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for i, rec in enumerate(small["new"][0]["sizes"]):
    def pick(label, key):
        values = [run["sizes"][i].get(key) for run in small[label]]
        values = [v for v in values if v is not None]
        return med(values) if values else float("nan")
    b, n, lean_b, lean, d = (pick("base", "geomix_full"), pick("new", "geomix_full"),
                             pick("base", "geomix_alpha_c"), pick("new", "geomix_alpha_c"),
                             pick("new", "dit"))
    dc = pick("new", "max_abs_chernoff_difference_nats")
    us = lambda s: f"{s * 1e6:.0f} us" if s < 0.01 else f"{s:.3f} s"
    print(f"| {rec['rows']} x {rec['vocab']:,} | {us(b)} | {us(n)} | {b / n:.2f} "
          f"| {us(lean_b)} | {us(lean)} | {lean_b / lean:.2f} "
          f"| {us(d)} | {d / n:.2f} | {d / lean:.2f} | {dc:.1e} |")
PY
