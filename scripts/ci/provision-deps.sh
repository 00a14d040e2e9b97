#!/usr/bin/env bash
# System packages the provisioning tests (tests/provision) need on a Debian/Ubuntu CI machine, run as root.
#   debootstrap  builds the Debian root the deploy is tested in (from Debian's mirror, ~1 min, cached after)
#   dpkg-dev     dpkg-deb for the dummy vendor packages
#   apt-utils    apt-ftparchive indexes the fake vendor repositories and writes their Release files
#   gnupg        signs those repositories with throw-away keys
# pyinfra itself comes from requirements/dev.txt.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends debootstrap dpkg-dev apt-utils gnupg ca-certificates tar >/dev/null
