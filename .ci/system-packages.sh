# Debian packages the build and tests need. Each area appends to PACKAGES.
PACKAGES=(make git)
for f in .ci/packages.d/*.txt; do
  [ -e "$f" ] || continue
  while read -r p; do [ -n "$p" ] && [ "${p:0:1}" != "#" ] && PACKAGES+=("$p"); done < "$f"
done

ensure_system_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
      return 1
    fi
    echo "installing: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}
