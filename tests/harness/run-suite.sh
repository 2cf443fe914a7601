#!/usr/bin/env bash
# Runs everything CI runs and ends with a summary: each step, its result and its
# duration. Logs go to reports/<step>.log; the tail of a failed step's log is
# printed. Exits non-zero when any step failed.
#
# Steps run SUITE_JOBS at a time (default 2): one Ansible controller keeps about
# one core busy, so a second step uses the other instead of leaving it idle. The
# longest steps start first (tests/harness/scenarios.sh lists the scenarios
# longest first), and the short ones fill in behind them. Each scenario has
# its own containers, network and Molecule directory, so steps share nothing but
# the machine. SUITE_JOBS=1 runs one step after another.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=.venv/bin
# The tools find each other (ansible-lint runs ansible) in the virtualenv, however the
# script is started.
export PATH="$PWD/$bin:$PATH"
jobs=${SUITE_JOBS:-2}
if ! [[ $jobs =~ ^[1-9][0-9]*$ ]]; then
  echo "SUITE_JOBS must be a positive whole number, not '$jobs'" >&2
  exit 2
fi
mkdir -p reports

declare -A commands=(
  [ansible-lint]="$bin/ansible-lint"
  [yamllint]="$bin/yamllint -s ."
  [ruff]="$bin/ruff check service tests molecule/shared/files && $bin/ruff format --check service tests molecule/shared/files"
  [pytest]="$bin/pytest"
)
# The order the summary lists them in.
order=(ansible-lint yamllint ruff pytest)
scenarios=()
while read -r s; do scenarios+=("$s"); done < <(tests/harness/scenarios.sh)
for s in "${scenarios[@]}"; do
  commands[molecule:$s]="$bin/molecule test -s $s"
  order+=("molecule:$s")
done
# The order they start in: the two longest scenarios, then the checks, then the
# other scenarios.
queue=()
for s in "${scenarios[@]:0:2}"; do queue+=("molecule:$s"); done
queue+=(ansible-lint yamllint ruff pytest)
for s in "${scenarios[@]:2}"; do queue+=("molecule:$s"); done

state=$(mktemp -d)
trap 'rm -rf "$state"' EXIT
printf '%s\n' "${queue[@]}" >"$state/queue"

# Take the next step off the queue; nothing when it is empty.
next_step() {
  (
    flock 9
    head -n 1 "$state/queue"
    sed -i 1d "$state/queue"
  ) 9>"$state/queue.lock"
}

run_step() {
  local name=$1 log="reports/${1//:/-}.log" start=$SECONDS result
  if bash -c "${commands[$name]}" >"$log" 2>&1; then result=passed; else result=FAILED; fi
  local took=$((SECONDS - start))
  echo "$result $took" >"$state/${name//:/-}.result"
  printf '==> %-24s %s (%ds)\n' "$name" "$result" "$took"
  if [[ $result == FAILED ]]; then
    # One block, so that the other step's lines do not land in the middle of it.
    { echo "---- last lines of $log ----"; tail -n 60 "$log"; echo "----"; } | cat
  elif [[ $name == pytest ]]; then
    tail -n 1 "$log"
  fi
}

worker() {
  local name
  while name=$(next_step) && [[ -n $name ]]; do
    run_step "$name"
  done
}

suite_start=$SECONDS
names=() results=() durations=()
if [[ -n "${SETUP_SECONDS:-}" ]]; then
  # make setup ran before this script: packages, .venv, the test image.
  names+=(setup) results+=(passed) durations+=("$SETUP_SECONDS")
  suite_start=$((SECONDS - SETUP_SECONDS))
fi
echo "Running ${#order[@]} steps, $jobs at a time"
for ((w = 0; w < jobs; w++)); do worker & done
wait

for name in "${order[@]}"; do
  read -r result took <"$state/${name//:/-}.result" 2>/dev/null || { result=FAILED took=0; }
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
printf '  %-24s %-8s %8s\n' "total (wall clock)" "" "$total"
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
