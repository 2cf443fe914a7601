#!/usr/bin/env bash
# The Molecule scenarios, longest first (their usual duration on a two-core
# machine), which is the order the suite starts them in; a scenario not listed
# here comes last.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
order=(rolling_update ha_pair common gpu_host llmserve nginx)
declare -A seen=()
for s in "${order[@]}"; do
  if [[ -f molecule/$s/molecule.yml ]]; then echo "$s"; seen[$s]=1; fi
done
for f in molecule/*/molecule.yml; do
  s=$(basename "$(dirname "$f")")
  [[ -n "${seen[$s]:-}" ]] || echo "$s"
done
