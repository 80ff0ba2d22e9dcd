#!/usr/bin/env bash
# Apply sysctl/99-flashsale.conf to the running kernel, skipping keys this kernel
# does not have (e.g. kernel.io_uring_disabled before 6.6) and reporting values it
# refuses (e.g. read-only in a container).
#
#   sysctl/apply.sh             apply now (lost on reboot)
#   sysctl/apply.sh --install   also install into /etc/sysctl.d and /etc/security/limits.d
#   sysctl/apply.sh --dry-run   only show what would change
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
CONF="$HERE/99-flashsale.conf"
LIMITS="$HERE/limits.conf"

mode=apply
case "${1:-}" in
  "") ;;
  --install) mode=install ;;
  --dry-run) mode=dry ;;
  *) echo "usage: $0 [--install|--dry-run]" >&2; exit 2 ;;
esac

if [[ $mode != dry && $(id -u) -ne 0 ]]; then
  echo "run as root" >&2
  exit 1
fi

applied=0 skipped=0 failed=0
while IFS= read -r line || [[ -n $line ]]; do
  line="${line%%#*}"
  [[ $line =~ ^[[:space:]]*$ ]] && continue
  key="${line%%=*}"
  value="${line#*=}"
  key="$(echo "$key" | xargs)"
  value="$(echo "$value" | xargs)"
  path="/proc/sys/${key//.//}"
  if [[ ! -e $path ]]; then
    echo "skip   $key (this kernel has no such key)"
    skipped=$((skipped + 1))
    continue
  fi
  current="$(tr -s '[:space:]' ' ' <"$path" | xargs)"
  if [[ $mode == dry ]]; then
    echo "would  $key = $value (now: $current)"
    continue
  fi
  if sysctl -q -w "$key=$value" >/dev/null 2>&1; then
    echo "set    $key = $value (was: $current)"
    applied=$((applied + 1))
  else
    echo "FAILED $key = $value (kept: $current; read-only here?)" >&2
    failed=$((failed + 1))
  fi
done <"$CONF"

if [[ $mode == install ]]; then
  install -m 0644 "$CONF" /etc/sysctl.d/99-flashsale.conf
  echo "installed /etc/sysctl.d/99-flashsale.conf (applied at boot by sysctl --system)"
  if [[ -d /etc/security/limits.d ]]; then
    install -m 0644 "$LIMITS" /etc/security/limits.d/99-flashsale.conf
    echo "installed /etc/security/limits.d/99-flashsale.conf (new login sessions)"
  else
    echo "no /etc/security/limits.d (PAM limits not installed); set limits in the service manager instead" >&2
  fi
fi

echo "sysctl: $applied set, $skipped skipped, $failed failed"
# Keys the kernel lacks are fine; a key it refused is reported but not fatal, so the
# script can run in containers where /proc/sys is partly read-only.
exit 0
