#!/bin/busybox sh
# A kernel-matrix guest's first process (run by busybox, from the initramfs). It mounts the
# host's root, shared read-only over 9p, under a writable tmpfs overlay, mounts the kernel's
# own filesystems and cgroup v2 there, and runs the job the host wrote into its job directory
# (shared read-write at the same path), as root in that tree. Then it powers the guest off.
# The host reads the outcome from the job directory; the last console line says how the job
# ended.
bb=/bin/busybox
$bb mkdir -p /proc /sys /dev /lower /rw /root
$bb mount -t proc proc /proc
$bb mount -t devtmpfs dev /dev
say() { echo "memtrace-guest: $*" > /dev/console; }

for module in $($bb cat /modules/order); do
	$bb insmod "/modules/$module" || say "insmod $module failed"
done
job=$($bb sed -n 's/.*memtrace\.job=\([^ ]*\).*/\1/p' /proc/cmdline)

$bb mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host /lower \
	|| say "cannot mount the host's root"
$bb mount -t tmpfs -o mode=0755 rw /rw
$bb mkdir -p /rw/upper /rw/work
$bb mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /root \
	|| say "cannot mount the overlay"
cd /root
$bb mount -t proc proc proc
$bb mount -t sysfs sys sys
$bb mount -t devtmpfs dev dev
$bb mkdir -p dev/pts dev/shm
$bb mount -t devpts devpts dev/pts
$bb mount -t tmpfs tmpfs dev/shm
$bb ln -sf /proc/self/fd dev/fd
# No tmpfs of its own on /tmp: the overlay's upper layer already takes the guest's writes
# there, and a checkout under /tmp must stay visible.
$bb mount -t tmpfs tmpfs run
$bb mount -t cgroup2 cgroup2 sys/fs/cgroup
$bb mount -t tracefs tracefs sys/kernel/tracing
$bb mount -t debugfs debugfs sys/kernel/debug
$bb mount -t bpf bpf sys/fs/bpf
$bb mkdir -p ".$job"
$bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 job ".$job" \
	|| say "cannot mount the job directory $job"

$bb chroot /root /bin/sh -c "cd /; exec /bin/sh '$job/run'"
say "job ended with exit code $?"
$bb sync
$bb poweroff -f
