# Helpers the scripts source: `need CMD` (is it on the PATH) and `apt_install PKG…` (Debian's
# packages, quietly, with sudo when not root).
need() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "$@" >/dev/null
}
