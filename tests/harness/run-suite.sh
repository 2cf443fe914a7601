#!/usr/bin/env bash
# Runs everything CI runs, one step after another, and ends with a summary: each
# step, its result and its duration. Logs go to reports/<step>.log; the tail of a
# failed step's log is printed. Exits non-zero when any step failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=.venv/bin
mkdir -p reports

steps=(
  "ansible-lint|$bin/ansible-lint"
  "yamllint|$bin/yamllint -s ."
  "ruff|$bin/ruff check service tests molecule/shared/files && $bin/ruff format --check service tests molecule/shared/files"
  "pytest|$bin/pytest"
)
for s in $(tests/harness/scenarios.sh); do
  steps+=("molecule:$s|$bin/molecule test -s $s")
done

names=() results=() durations=()
suite_start=$SECONDS
if [[ -n "${SETUP_SECONDS:-}" ]]; then
  # make setup ran before this script: packages, .venv, the test image.
  names+=(setup) results+=(passed) durations+=("$SETUP_SECONDS")
  suite_start=$((SECONDS - SETUP_SECONDS))
fi
for step in "${steps[@]}"; do
  name=${step%%|*}
  cmd=${step#*|}
  log="reports/${name//:/-}.log"
  printf '==> %-24s ' "$name"
  start=$SECONDS
  if bash -c "$cmd" >"$log" 2>&1; then
    result=passed
  else
    result=FAILED
  fi
  took=$((SECONDS - start))
  printf '%s (%ds)\n' "$result" "$took"
  if [[ $result == FAILED ]]; then
    echo "---- last lines of $log ----"
    tail -n 60 "$log"
    echo "----"
  elif [[ $name == pytest ]]; then
    tail -n 1 "$log"
  fi
  names+=("$name") results+=("$result") durations+=("$took")
done

passed=0 failed=0
echo
echo "Summary"
printf '  %-24s %-8s %8s\n' step result seconds
for i in "${!names[@]}"; do
  printf '  %-24s %-8s %8s\n' "${names[$i]}" "${results[$i]}" "${durations[$i]}"
  if [[ ${results[$i]} == passed ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
total=$((SECONDS - suite_start))
printf '  %-24s %-8s %8s\n' total "" "$total"
# The lines that say why, last, where a reader of only the end of the output sees them.
for i in "${!names[@]}"; do
  [[ ${results[$i]} == passed ]] && continue
  log="reports/${names[$i]//:/-}.log"
  echo
  echo "Why ${names[$i]} failed ($log):"
  grep -E 'fatal:|FAILED!|CRITICAL|ERROR|Error|error:|assert|Traceback|^E ' "$log" | tail -n 15 | cut -c1-400
done
echo "Logs: reports/"
echo "steps: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
