#!/bin/busybox sh
# /init of the VM-test initramfs: set up a minimal system, run the policy
# suite, report over the serial console, power off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && echo "+pids +memory" > /sys/fs/cgroup/cgroup.subtree_control
ip link set lo up
export PATH=/usr/bin:/bin HOME=/root
abi=$(sed -n 's/.*portcullis\.abi=\([0-9]*\).*/\1/p' /proc/cmdline)
profile=$(sed -n 's/.*portcullis\.profile=\([A-Za-z0-9_.-]*\).*/\1/p' /proc/cmdline)
echo "VMTEST BOOTED $(uname -r)"
if [ -n "$profile" ]; then
    /usr/bin/portcullis-vmsuite /usr/bin/portcullis /usr/bin/portcullis-probe --expect-abi "$abi" --only-profile "$profile"
else
    /usr/bin/portcullis-vmsuite /usr/bin/portcullis /usr/bin/portcullis-probe --expect-abi "$abi"
fi
echo "VMTEST EXIT $?"
poweroff -f
