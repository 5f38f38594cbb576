# Sourced by the deploy scripts: `log`, and `apt_install PACKAGE`, which installs a missing Debian
# package when running as root and otherwise says exactly what to install.

log() { printf '==> %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [[ $(id -u) -ne 0 ]]; then
    log "$1 is not installed. Install it with: sudo apt-get install -y $1"
    exit 1
  fi
  if [[ $apt_updated -eq 0 ]]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "Installing $1 with apt"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}
