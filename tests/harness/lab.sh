#!/usr/bin/env bash
# The lab: the whole stack on local Podman containers.
#   lab.sh up     create lb1, lb2, gpu1, gpu2 on network llmfleet-lab, run site.yml
#                 against inventories/lab, then show what runs where
#   lab.sh down   remove every container, network and volume the lab made
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/tests/harness/containers.conf}"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
PATH="$PWD/.venv/bin:$PATH"
platforms=tests/harness/lab-platforms.yml
inventory=inventories/lab

wheel() {
  # The GPU hosts install the service from a wheel of this checkout. A fixed
  # timestamp keeps the wheel byte-identical while the sources do not change,
  # so a second `make lab` reinstalls nothing.
  SOURCE_DATE_EPOCH=315532800 pip wheel --no-deps --no-build-isolation -q . -w .cache/dist >reports/lab-wheel.log 2>&1 \
    || { tail -n 40 reports/lab-wheel.log; exit 1; }
}

up() {
  wheel
  ansible-playbook -i localhost, -c local -e ansible_python_interpreter="$PWD/.venv/bin/python" molecule/shared/create.yml -e @"$platforms" >reports/lab-create.log 2>&1 \
    || { tail -n 40 reports/lab-create.log; exit 1; }
  ansible-playbook -i "$inventory" site.yml | tee reports/lab-site.log
  report
}

report() {
  echo
  echo "Lab hosts (network llmfleet-lab):"
  podman ps --filter name=llmfleet-lab- --format '  {{.Names}}\t{{.Status}}'
  ansible-playbook -i "$inventory" playbooks/status.yml -e status_api_key=lab-key-not-a-secret
}

down() {
  ansible-playbook -i localhost, -c local -e ansible_python_interpreter="$PWD/.venv/bin/python" molecule/shared/destroy.yml -e @"$platforms" >reports/lab-destroy.log 2>&1 \
    || { tail -n 40 reports/lab-destroy.log; exit 1; }
  echo "lab removed"
}

mkdir -p reports
case "${1:-}" in
  up) up ;;
  down) down ;;
  report) report ;;
  *) echo "usage: $0 up|down|report" >&2; exit 2 ;;
esac
