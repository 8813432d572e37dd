#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run all of it:
# lint, types, and every test against real SQLite, PostgreSQL, MariaDB, etcd and twistd.
set -euo pipefail
cd "$(dirname "$0")"

# Real components the tests start themselves (nothing here is started as a system service),
# the tools that make test machines out of namespaces (ip, unshare, nsenter, useradd), and a
# node's container runtime (containerd with runc, the CNI plugins, busybox for test images),
# and what builds and boots an appliance image (mmdebstrap, systemd-nspawn, qemu).
DEBIAN_PACKAGES="openssl ca-certificates postgresql mariadb-server etcd-server etcd-client haproxy
    iproute2 util-linux passwd containerd containernetworking-plugins busybox-static zstd
    iptables nftables ipset conntrack iperf3 dnsmasq-base dnsperf
    mmdebstrap systemd-container qemu-system-x86 e2fsprogs"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    # shellcheck disable=SC2086
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $DEBIAN_PACKAGES >/dev/null
fi

# The suite runs against the built wheel, as an appliance image would install it.
python3 -m venv .venv
.venv/bin/pip install -qq --disable-pip-version-check build
rm -rf .venv/dist
.venv/bin/python -m build --wheel --outdir .venv/dist . >.venv/build.log 2>&1 \
    || { cat .venv/build.log; exit 1; }
wheel=$(ls .venv/dist/k3stw-*.whl)
.venv/bin/pip install -qq --disable-pip-version-check --force-reinstall --no-deps "$wheel"
.venv/bin/pip install -qq --disable-pip-version-check "${wheel}[test,dev]"

APPLIANCE_SCRIPTS="appliance/build appliance/k3stw-console appliance/k3stw-firstboot"
.venv/bin/ruff check k3stw tests bench twisted $APPLIANCE_SCRIPTS
.venv/bin/ruff format --check k3stw tests bench twisted $APPLIANCE_SCRIPTS
.venv/bin/mypy
# The image's scripts have no .py name: mypy checks each as a __main__ of its own.
for script in $APPLIANCE_SCRIPTS; do .venv/bin/mypy --strict "$script"; done
HYPOTHESIS_PROFILE=ci .venv/bin/python -b -m pytest -q -p no:randomly "$@"
