#!/bin/busybox sh
# PID 1 of a `cargo xtask vm-test` guest. It mounts what unixtrace needs, loads
# unix_diag, runs every test binary in /tests under each strategy the kernel has,
# and reports on the serial console in lines the host parses:
#   @@UNIXPEER <marker> RESULT col=<column> status=pass|fail|unsupported reason=<text>
# then DONE, and powers off. The host passes UNIXPEER_MARKER (random per run) and
# UNIXPEER_KERNEL on the kernel command line, which hands them to init as environment,
# and UNIXPEER_FILTER (`cargo xtask vm-test --filter`) to run only matching tests.
# UNIXPEER_COLUMNS (comma-separated) names the columns this boot runs: the host
# spreads one kernel's columns over several guests to keep its cores busy.

/bin/busybox mkdir -p /bin /proc /sys /dev /tmp
/bin/busybox --install -s /bin
# Debian's root PATH: the host's real ss and lsof (in /usr/bin, copied from the
# host) come before busybox's applets of the same name in /bin.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

M="@@UNIXPEER $UNIXPEER_MARKER"
say() { echo "$M $*"; }
fatal() {
    say "FATAL $*"
    poweroff -f
}
# A test binary that hangs is killed after this many seconds. The slowest, live,
# takes about 140 s under TCG on an idle 2-core host.
TEST_TIMEOUT=480

mnt() {
    mkdir -p "$3" && mount -t "$1" "$2" "$3" || fatal "mount -t $1 $2 $3 failed"
}
mnt proc proc /proc
mnt sysfs sysfs /sys
# The initramfs is already a RAM filesystem: no tmpfs over /tmp, which would
# hide the test helpers shipped at their host paths when the checkout (as in
# CI's clone) lives under /tmp.
mkdir -p /tmp && chmod 1777 /tmp
mnt tracefs tracefs /sys/kernel/tracing
mnt debugfs debugfs /sys/kernel/debug
mnt bpf bpf /sys/fs/bpf
mnt securityfs securityfs /sys/kernel/security
mnt cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up || fatal "ip link set lo up failed"
# Open-file limits as a Debian system gives its services (systemd: soft 1024,
# hard 524288); the kernel's defaults for init (1024/4096) are lower than any
# real host's, and the snapshot workload raises its soft limit to the hard one.
ulimit -H -n 524288 && ulimit -S -n 1024 || fatal "ulimit -n failed"
while read -r ko; do
    insmod "$ko" || fatal "insmod $ko failed"
done </etc/modules
say "BOOTED kernel=$(uname -r) modules=$(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"

# What the tests are told.
export UNIXTRACE_BIN=/bin/unixtrace UNIXPEER_IN_VM=1 RUST_BACKTRACE=1

# `cargo xtask bench tax`: the benchmark instead of the tests, its lines
# marked TAX (it finds every strategy the kernel has by itself).
if [ -n "$UNIXPEER_TAXBENCH" ]; then
    "$UNIXPEER_TAXBENCH" "$(uname -r)" /bin/unixtrace "${UNIXPEER_PAIRS:-3}" 1 2>&1 | while read -r line; do
        say "TAX $line"
    done
    say DONE
    poweroff -f
fi

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

uptime_s() { cut -d' ' -f1 /proc/uptime; }

# Test binaries whose tests never start a capture (`unixtrace --follow`): their
# result cannot depend on UNIXTRACE_BACKEND, so they run once per kernel, in the
# auto column, instead of once per strategy. Above all `snapshot`, whose 10k-socket
# comparison with ss and lsof takes about 35 s per run under TCG. `timeline`
# records through --follow, but what it tests (the file format, crash safety,
# replay and export) sits above the capture layer, which `live` covers in every
# column; the host runs it under the tracepoint strategy on its kernel, and one
# guest (the oldest kernel's, UNIXPEER_TIMELINE=1) under fentry, where what is
# recorded differs most from the host's. `capture_kernel` runs `unixtrace capture`, whose programs are the
# same under every strategy. `identity` names units and containers from
# /proc/PID/cgroup in userspace: the kernel programs carry no cgroup, so the
# strategy only decides whether an event arrives, which `live` checks in every
# column. A binary not named here runs in every column.
ONCE=" snapshot vm_smoke no_btf timeline capture_kernel identity "

# Per-test durations in the console log (libtest's --report-time), if this
# libtest still takes the option: it is unstable, hence RUSTC_BOOTSTRAP.
REPORT_TIME=""
if RUSTC_BOOTSTRAP=1 /tests/vm_smoke --list -Z unstable-options --report-time >/dev/null 2>&1; then
    REPORT_TIME="-Z unstable-options --report-time"
fi

# begin COLUMN: whether this boot runs COLUMN (UNIXPEER_COLUMNS, all by default);
# if so, clears what run_suite adds up for it.
begin() {
    case ",${UNIXPEER_COLUMNS:-fentry,kprobe,tracepoint,auto,no-btf}," in
    *",$1,"*) ;;
    *) return 1 ;;
    esac
    failed=""
    flaky=""
    passed=0
}

# run_suite COLUMN all|strategy|once [TEST FILTER...]: the test binaries with the
# current environment, all of them, only those that depend on the strategy (not in
# $ONCE) or only those that do not. Adds to $failed (binaries that failed), $flaky
# (tests that failed, then passed when run again alone) and $passed (tests passed).
run_suite() {
    col=$1
    scope=$2
    shift 2
    for t in /tests/*; do
        name=${t##*/}
        # The timeline tests run in one guest of the matrix (vm.rs, `oldest`).
        if [ "$name" = timeline ] && [ "${UNIXPEER_TIMELINE:-0}" != 1 ]; then
            continue
        fi
        case "$scope $ONCE" in
        "strategy "*" $name "*) continue ;;
        "once "*" $name "*) ;;
        "once "*) continue ;;
        esac
        log=/tmp/$col-$name.log
        t0=$(uptime_s)
        # shellcheck disable=SC2086 # $REPORT_TIME is two words or none
        # shellcheck disable=SC2086 # $UNIXPEER_FILTER is one word or none
        RUSTC_BOOTSTRAP=1 timeout "$TEST_TIMEOUT" "$t" --test-threads=1 $REPORT_TIME "$@" $UNIXPEER_FILTER >"$log" 2>&1
        rc=$?
        echo "---- $col: $name took $(awk "BEGIN { printf \"%.1f\", $(uptime_s) - $t0 }") s"
        grep '^test .* <' "$log"
        n=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed;.*/\1/p' "$log" | head -n 1)
        passed=$((passed + ${n:-0}))
        if [ "$rc" != 0 ]; then
            # The details of every failed test (libtest prints them after a line
            # `failures:`), or the end of the output if there is no such line.
            echo "---- $col: $t exited $rc; its failures:"
            if grep -q '^failures:$' "$log"; then
                sed -n '/^failures:$/,$p' "$log" | cut -c1-2000 | head -n 400
            else
                tail -n 80 "$log"
            fi
            echo "----"
            # Two guests share two host cores under TCG: a test that fails
            # once and passes when run again alone is reported as flaky (its
            # failure is printed above and its name travels in the RESULT),
            # not as a failed column. One that fails again fails the column.
            names=$(awk '/^failures:$/ { n = NR } { l[NR] = $0 } END { for (i = n + 1; i <= NR; i++) print l[i] }' "$log" |
                sed -n 's/^    \([A-Za-z0-9_:]*\)$/\1/p')
            if [ -n "$names" ]; then
                # shellcheck disable=SC2086 # one word per test name
                if RUSTC_BOOTSTRAP=1 timeout "$TEST_TIMEOUT" "$t" --test-threads=1 --exact $names >"$log.retry" 2>&1; then
                    n=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed;.*/\1/p' "$log.retry" | head -n 1)
                    passed=$((passed + ${n:-0}))
                    flaky="$flaky $name($(echo "$names" | tr '\n' ' ' | sed 's/ $//; s/ /,/g'))"
                    echo "---- $col: $name: the failed tests passed when run again alone"
                    continue
                fi
                echo "---- $col: $name: the failed tests failed again when run alone:"
                tail -n 40 "$log.retry"
            fi
            failed="$failed $name(exit $rc)"
        fi
    done
}

report() { # report COLUMN: a RESULT line from $failed and $passed
    if [ -n "$failed" ]; then
        say "RESULT col=$1 status=fail reason=failed:$failed"
    elif [ "$passed" = 0 ]; then
        say "RESULT col=$1 status=fail reason=no test ran"
    elif [ -n "$flaky" ]; then
        say "RESULT col=$1 status=pass reason=$passed tests passed; flaky, passed when run again:$flaky"
    else
        say "RESULT col=$1 status=pass reason=$passed tests passed"
    fi
}

for strategy in fentry kprobe tracepoint; do
    begin "$strategy" || continue
    why=$(unsupported "$strategy" | tr '\n' ';' | sed 's/;$//; s/;/; /g')
    if [ -n "$why" ]; then
        say "RESULT col=$strategy status=unsupported reason=$why"
        continue
    fi
    export UNIXTRACE_BACKEND="$strategy"
    run_suite "$strategy" strategy
    report "$strategy"
done
unset UNIXTRACE_BACKEND

# No backend named: the strategy-independent binaries, and unixtrace's own
# choice. That choice is fentry on every Debian cloud kernel (the verbose test
# checks it says so), whose programs the fentry column has already run through
# every strategy-dependent test: here only the tests that show the choice works.
if begin auto; then
    run_suite auto once
    run_suite auto strategy --exact verbose_shows_the_kernel_programs_log text_output_names_both_ends_on_one_line
    report auto
fi

# A kernel without BTF: hide /sys/kernel/btf/vmlinux under an empty tmpfs, and the
# test no_btf_error must pass (it asserts unixtrace's clear error).
# Whatever --filter asked for, this column is about no_btf_error alone.
unset UNIXPEER_FILTER
if begin no-btf; then
    mount -t tmpfs nobtf /sys/kernel/btf || fatal "cannot hide /sys/kernel/btf"
    export UNIXTRACE_EXPECT_NO_BTF=1
    run_suite no-btf all no_btf_error
    unset UNIXTRACE_EXPECT_NO_BTF
    umount /sys/kernel/btf
    if [ -z "$failed" ] && ! grep -q 'no_btf_error \.\.\. ok' /tmp/no-btf-*.log; then
        failed=" no test no_btf_error ran"
    fi
    report no-btf
fi

say DONE
poweroff -f
