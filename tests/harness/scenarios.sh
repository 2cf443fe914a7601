#!/usr/bin/env bash
# The Molecule scenarios in the order the suite runs them: single-role scenarios
# first, multi-host ones after.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
order=(common nginx llmserve ha_pair rolling_update)
declare -A seen=()
for s in "${order[@]}"; do
  if [[ -f molecule/$s/molecule.yml ]]; then echo "$s"; seen[$s]=1; fi
done
for f in molecule/*/molecule.yml; do
  s=$(basename "$(dirname "$f")")
  [[ -n "${seen[$s]:-}" ]] || echo "$s"
done
