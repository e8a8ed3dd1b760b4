#!/bin/bash
# Runs inside the IPVS VM (tests/vmhelp.py boots it): put the Python image's
# parts over their paths (standard library, venv packages, libpython, the
# project's code with bytecode: OUT/mounts), then run the selected
# ipvs_kernel tests with pytest; each outcome goes to OUT/report.json.
# Usage: guest.sh OUT REPO   (OUT holds `mounts` and `pytest.args`)
set -u
booted=$(cut -d' ' -f1 /proc/uptime)
out=$1
repo=$2
disk=/dev/disk/by-id/virtio-rgpy
if [ -e "$disk" ] && [ -s "$out/mounts" ]; then
    # /tmp is the guest's own tmpfs; the host's files stay untouched.
    if mkdir -p /tmp/rgpy && mount -o ro "$disk" /tmp/rgpy; then
        while read -r sub host; do
            mount --bind "/tmp/rgpy/$sub" "$host" || echo "guest.sh: could not mount the image over $host"
        done < "$out/mounts"
    else
        echo "guest.sh: could not mount $disk; Python is read over 9p"
    fi
fi
cd "$repo" || exit 2
export RULEGEN_IN_VM=1 RULEGEN_VM_REPORT="$out/report.json" RULEGEN_VM_BOOTED="$booted" PYTHONDONTWRITEBYTECODE=1 \
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
# -P: the repository's root (9p) is not searched for every import; rulegen and the tests are found anyway.
exec "$repo/.venv/bin/python" -P -m pytest -p no:cacheprovider @"$out/pytest.args"
