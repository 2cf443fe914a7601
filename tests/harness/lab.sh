#!/usr/bin/env bash
# The lab: the whole stack on local Podman containers.
#   lab.sh up     create lb1, lb2, gpu1, gpu2 on network llmfleet-lab, run site.yml
#                 against inventories/lab, then show what runs where
#   lab.sh down   remove every container, network and volume the lab made
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/tests/harness/containers.conf}"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
export LLMFLEET_TEST_IMAGE="${MOLECULE_IMAGE:-localhost/llmfleet-debian12:latest}"
PATH="$PWD/.venv/bin:$PATH"
platforms=tests/harness/lab-platforms.yml
inventory=inventories/lab

up() {
  ansible-playbook -i localhost, -c local molecule/shared/create.yml -e @"$platforms" >reports/lab-create.log 2>&1 \
    || { tail -n 40 reports/lab-create.log; exit 1; }
  ansible-playbook -i "$inventory" site.yml | tee reports/lab-site.log
  report
}

report() {
  echo
  echo "Lab hosts (network llmfleet-lab):"
  podman ps --filter name=llmfleet-lab- --format '  {{.Names}}\t{{.Status}}'
  ansible-playbook -i "$inventory" playbooks/status.yml
}

down() {
  ansible-playbook -i localhost, -c local molecule/shared/destroy.yml -e @"$platforms" >reports/lab-destroy.log 2>&1 \
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
