#!/bin/busybox sh
# PID 1 of a `cargo xtask vm-test` guest. It mounts what unixtrace needs, loads
# unix_diag, runs every test binary in /tests under each strategy the kernel has,
# and reports on the serial console in lines the host parses:
#   @@UNIXPEER <marker> RESULT col=<column> status=pass|fail|unsupported reason=<text>
# then DONE, and powers off. The host passes UNIXPEER_MARKER (random per run) and
# UNIXPEER_KERNEL on the kernel command line, which hands them to init as environment.

/bin/busybox mkdir -p /bin /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

M="@@UNIXPEER $UNIXPEER_MARKER"
say() { echo "$M $*"; }
fatal() {
    say "FATAL $*"
    poweroff -f
}
# A test binary that hangs is killed after this many seconds.
TEST_TIMEOUT=240

mnt() {
    mkdir -p "$3" && mount -t "$1" "$2" "$3" || fatal "mount -t $1 $2 $3 failed"
}
mnt proc proc /proc
mnt sysfs sysfs /sys
mnt tmpfs tmpfs /tmp
mnt tracefs tracefs /sys/kernel/tracing
mnt debugfs debugfs /sys/kernel/debug
mnt bpf bpf /sys/fs/bpf
mnt securityfs securityfs /sys/kernel/security
mnt cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up || fatal "ip link set lo up failed"
while read -r ko; do
    insmod "$ko" || fatal "insmod $ko failed"
done </etc/modules
say "BOOTED kernel=$(uname -r) modules=$(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"

# What the tests are told.
export UNIXTRACE_BIN=/bin/unixtrace UNIXPEER_IN_VM=1 RUST_BACKTRACE=1

config() {
    grep -E "^(# )?CONFIG_$1[= ]" /boot/config || echo "CONFIG_$1 absent"
}

# Prints why the strategy $1 cannot work on this kernel; nothing when it can.
unsupported() {
    case "$1" in
    fentry)
        [ -e /sys/kernel/btf/vmlinux ] || echo "no /sys/kernel/btf/vmlinux ($(config DEBUG_INFO_BTF))"
        grep -q '^CONFIG_BPF_JIT=y' /boot/config || echo "no BPF trampolines: $(config BPF_JIT)"
        ;;
    kprobe)
        [ -d /sys/bus/event_source/devices/kprobe ] ||
            echo "no /sys/bus/event_source/devices/kprobe ($(config KPROBES))"
        ;;
    tracepoint)
        [ -d /sys/kernel/tracing/events/syscalls ] ||
            echo "no /sys/kernel/tracing/events/syscalls ($(config FTRACE_SYSCALLS))"
        ;;
    esac
}

# run_suite COLUMN [TEST FILTER...]: every test binary with the current environment.
# Sets $failed (binaries that failed) and $passed (tests passed in all of them).
run_suite() {
    col=$1
    shift
    failed=""
    passed=0
    for t in /tests/*; do
        name=${t##*/}
        log=/tmp/$col-$name.log
        timeout "$TEST_TIMEOUT" "$t" --test-threads=1 "$@" >"$log" 2>&1
        rc=$?
        n=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed;.*/\1/p' "$log" | head -n 1)
        passed=$((passed + ${n:-0}))
        if [ "$rc" != 0 ]; then
            failed="$failed $name(exit $rc)"
            echo "---- $col: $t exited $rc; its last output:"
            tail -n 80 "$log"
            echo "----"
        fi
    done
}

report() { # report COLUMN: a RESULT line from $failed and $passed
    if [ -n "$failed" ]; then
        say "RESULT col=$1 status=fail reason=failed:$failed"
    elif [ "$passed" = 0 ]; then
        say "RESULT col=$1 status=fail reason=no test ran"
    else
        say "RESULT col=$1 status=pass reason=$passed tests passed"
    fi
}

for strategy in fentry kprobe tracepoint; do
    why=$(unsupported "$strategy" | tr '\n' ';' | sed 's/;$//; s/;/; /g')
    if [ -n "$why" ]; then
        say "RESULT col=$strategy status=unsupported reason=$why"
        continue
    fi
    export UNIXTRACE_BACKEND="$strategy"
    run_suite "$strategy"
    report "$strategy"
done
unset UNIXTRACE_BACKEND

# No backend named: the snapshot tests, and live tests with unixtrace's own choice.
run_suite auto
report auto

# A kernel without BTF: hide /sys/kernel/btf/vmlinux under an empty tmpfs, and the
# test no_btf_error must pass (it asserts unixtrace's clear error).
mount -t tmpfs nobtf /sys/kernel/btf || fatal "cannot hide /sys/kernel/btf"
export UNIXTRACE_EXPECT_NO_BTF=1
run_suite no-btf no_btf_error
unset UNIXTRACE_EXPECT_NO_BTF
umount /sys/kernel/btf
if [ -z "$failed" ] && ! grep -q 'no_btf_error \.\.\. ok' /tmp/no-btf-*.log; then
    failed=" no test no_btf_error ran"
fi
report no-btf

say DONE
poweroff -f
