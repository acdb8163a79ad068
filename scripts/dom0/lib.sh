# scripts/dom0/lib.sh — helpers for the dom0-side scenarios (sourced by run-scenarios).
#
# Written for busybox sh (the dom0 initramfs under QEMU) and bash/dash (a real dom0).
# Scenarios drive the domain under test only through the real tools: xl and xenstore-*.
#
# A scenario runs in a subshell with these set by run-scenarios:
#   SCENARIO   its name (e.g. "boot", "boot@linux")
#   SUBJECT    "guest" (our kernel) or "linux" (Debian's Linux 6.1 as the peer)
#   WORK       a private scratch directory (xl -F logs, tool output, the failure reason)
#   REPO       the repo-shaped directory holding scripts/ and the kernel/peer images
#   CONSOLE_DIR  where xenconsoled writes guest-<name>.log (started with --log=guest)
# It ends with pass (return 0), `fail REASON`, or `skip REASON`.
# File descriptor 3 is the runner's stdout (the serial console): reports go there even
# from inside a helper whose output is redirected (e.g. a condition polled by wait_for).

# ---------------------------------------------------------------- time
# Centiseconds since boot: /proc/uptime always has two decimals, and integer arithmetic
# is all busybox sh has. Monotonic, unlike the (unset) wall clock of the dom0 under QEMU.
now_cs() {
    local up _
    read -r up _ </proc/uptime
    echo "${up%.*}${up#*.}"
}

# Format centiseconds as seconds with two decimals.
fmt_cs() {
    printf '%d.%02d' $(($1 / 100)) $(($1 % 100))
}

# ---------------------------------------------------------------- reporting
# Informational progress, visible on the serial log (not parsed for verdicts).
say() {
    echo "xenci[$SCENARIO] $*" >&3
}

# A measurement the host report shows: XENCI INFO <scenario> key=value
info() {
    echo "XENCI INFO $SCENARIO $*" >&3
}

# End the scenario as FAIL with a one-line reason; show the last guest lines as context.
fail() {
    echo "$*" >"$WORK/reason"
    say "FAIL: $*"
    show_guest_log
    exit 1
}

# End the scenario as SKIP (e.g. the guest's self-tests reported SKIP).
skip() {
    echo "$*" >"$WORK/reason"
    exit 77
}

# The last lines of the subject's console log, as `XENCI LOG <scenario> | line`, so the
# host report can print them under a failure. Falls back to the hypervisor's copy of the
# guest's port-0xE9 output (`(dN) ...` in xl dmesg) when the console log is empty.
show_guest_log() {
    local n=${1:-15}
    {
        if [ -n "${CONSOLE_LOG:-}" ] && [ -s "$CONSOLE_LOG" ]; then
            tail -n "$n" "$CONSOLE_LOG" | sed "s/^/XENCI LOG $SCENARIO | /"
        elif [ -n "${DOMID:-}" ]; then
            xl dmesg 2>/dev/null | grep "(d$DOMID)" | tail -n "$n" | sed "s/^/XENCI LOG $SCENARIO | /"
        fi
        if [ -s "$WORK/xl-create.log" ]; then
            tail -n 5 "$WORK/xl-create.log" | sed "s/^/XENCI LOG $SCENARIO | xl: /"
        fi
    } >&3
}

# ---------------------------------------------------------------- waiting
# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND (every 0.2 s) until it succeeds
# or the deadline passes. Never a fixed sleep: TCG timing varies (HARNESS-NOTES 16).
wait_for() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$(($(now_cs) + secs * 100))
    while ! "$@" >/dev/null 2>&1; do
        if [ "$(now_cs)" -ge "$deadline" ]; then
            say "timeout after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# Run a tool with a time limit, its output appended to the scenario's tool log. A hung
# toolstack command must end the scenario, not the whole run.
tool() {
    echo "+ $*" >>"$WORK/tools.log"
    timeout 60 "$@" >>"$WORK/tools.log" 2>&1
}

# ---------------------------------------------------------------- the domain under test
# xl config and ready marker per subject (see README "The guest contract").
subject_cfg() {
    case $SUBJECT in
        guest) echo scripts/guest.cfg ;;
        linux) echo scripts/linux-peer.cfg ;;
    esac
}

# Create the domain NAME from the subject's config in the foreground-mode xl (`-F`, run in
# the background): that xl process is the domain's monitor and logs the shutdown reason
# code when the domain ends. Extra xl config lines (e.g. 'extra="panic"') follow NAME.
# Sets DOMNAME, DOMID, CONSOLE_LOG, CREATE_CS.
create_domain() {
    DOMNAME=$1
    shift
    CONSOLE_LOG=$CONSOLE_DIR/guest-$DOMNAME.log
    rm -f "$CONSOLE_LOG"
    echo "$DOMNAME" >>"$WORK/domains"
    CREATE_CS=$(now_cs)
    say "xl create -F $(subject_cfg) name=\"$DOMNAME\" $*"
    (cd "$REPO" && exec xl create -F "$(subject_cfg)" "name=\"$DOMNAME\"" "$@") \
        >"$WORK/xl-create.log" 2>&1 &
    MONITOR=$!
    echo "$MONITOR" >>"$WORK/monitors"
    # xl -F logs "Waiting for domain NAME (domid N) to die" once the domain runs; reading
    # it there also works for a domain that is gone again before `xl domid` could see it.
    DOMID=
    wait_for 60 "domain $DOMNAME to be created" created_domid \
        || fail "xl create did not create domain $DOMNAME: $(tail -n 3 "$WORK/xl-create.log" | tr '\n' ' ')"
    DOMID=$(created_domid)
    say "domain $DOMNAME has domid $DOMID"
    # For run-scenarios' watchdog, which cannot see this subshell's variables.
    echo "$CONSOLE_LOG" >"$WORK/console-log"
    echo "$DOMID" >"$WORK/domid"
}

# The domid xl -F reports for the domain it created last; fails (so wait_for keeps
# waiting) until there is one, and fails the scenario when xl exited without one.
created_domid() {
    local d
    d=$(sed -n 's/.*Waiting for domain .* (domid \([0-9]*\)) to die.*/\1/p' "$WORK/xl-create.log" | tail -n 1)
    if [ -n "$d" ]; then
        echo "$d"
        return 0
    fi
    kill -0 "$MONITOR" 2>/dev/null \
        || fail "xl create failed: $(grep -v '^Parsing config' "$WORK/xl-create.log" | tail -n 2 | tr '\n' ' ')"
    return 1
}

# The line in the console log that says the subject is up.
#   guest: "... ready domid=<N> target_kib=<K>" (for the domid it has now)
#   linux: "xenci-peer: ready target_kib=<K>" (the peer cannot see its domid; count lines)
ready_seen() {
    local count=${1:-1}
    [ -f "$CONSOLE_LOG" ] || return 1
    case $SUBJECT in
        guest) grep -Eq "ready domid=$DOMID( |\$)" "$CONSOLE_LOG" ;;
        linux) [ "$(grep -c 'xenci-peer: ready' "$CONSOLE_LOG")" -ge "$count" ] ;;
    esac
}

# Wait until the subject reports ready; fail with the right reason if it crashed or
# vanished instead. Reports the seconds from `xl create` to ready.
wait_ready() {
    local secs=$1 count=${2:-1} deadline
    deadline=$(($(now_cs) + secs * 100))
    while ! ready_seen "$count"; do
        check_not_crashed
        if domain_gone "$DOMNAME"; then
            ready_seen "$count" && break
            fail "domain $DOMNAME ended before its ready marker (shutdown reason: $(reason_name "$(shutdown_reason)"))"
        fi
        if [ "$(now_cs)" -ge "$deadline" ]; then
            # Tell a dead PV console apart from a guest that never got ready.
            if [ "$SUBJECT" = guest ] && xl dmesg 2>/dev/null | grep -q "(d$DOMID) .*ready domid=$DOMID"; then
                fail "ready marker on port 0xE9 (xl dmesg) but not in the PV console log $CONSOLE_LOG within ${secs}s"
            fi
            fail "no ready marker from $DOMNAME (domid $DOMID) within ${secs}s"
        fi
        sleep 0.2
    done
    info "ready_secs=$(fmt_cs $(($(now_cs) - CREATE_CS))) domid=$DOMID"
    grep -E 'ready (domid|target_kib)' "$CONSOLE_LOG" | tail -n 1 | sed "s/^/xenci[$SCENARIO] marker: /"
}

# xl list state letters of NAME (r b p s c d), empty if the domain does not exist.
domain_state() {
    xl list "$1" 2>/dev/null | awk 'NR == 2 { print $5 }'
}

# Fail at once when the domain crashed unexpectedly, quoting the guest's panic line.
check_not_crashed() {
    case $(domain_state "$DOMNAME") in
        *c*) fail "domain crashed: $(panic_line || echo 'no PANIC line in the console log')" ;;
    esac
}

# The guest's panic message (our kernel: "PANIC ..."; Linux: "Kernel panic - ...").
panic_line() {
    [ -f "$CONSOLE_LOG" ] && grep -m1 -E '(^|\] )PANIC|Kernel panic' "$CONSOLE_LOG"
}

# The shutdown reason code xl -F logged for the domain's last shutdown
# (0 poweroff, 1 reboot, 2 suspend, 3 crash, 4 watchdog, 5 soft_reset), or nothing.
shutdown_reason() {
    sed -n 's/.*has shut down, reason code \([0-9]*\).*/\1/p' "$WORK/xl-create.log" | tail -n 1
}

reason_logged() {
    [ -n "$(shutdown_reason)" ]
}

reason_name() {
    case $1 in
        0) echo poweroff ;; 1) echo reboot ;; 2) echo suspend ;; 3) echo crash ;;
        4) echo watchdog ;; 5) echo soft_reset ;; '') echo none ;; *) echo "code $1" ;;
    esac
}

# Exact page counts of domain $1 from Xen (xl list rounds to MiB; HARNESS-NOTES 14):
# prints "tot_pages max_pages" from the newest `xl debug-keys q` dump.
domain_pages() {
    xl debug-keys q >/dev/null 2>&1 || return 1
    xl dmesg 2>/dev/null | awk -v d="$1" '
        index($0, "General information for domain " d ":") { grab = 1; next }
        grab && /pages=/ {
            tot = ""; max = ""
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^(tot|nr)_pages=/) { sub(/.*=/, "", $i); tot = $i }
                if ($i ~ /^max_pages=/) { sub(/.*=/, "", $i); max = $i }
            }
            grab = 0
        }
        END { if (tot == "") exit 1; print tot, max }'
}

domain_gone() {
    ! xl domid "$1" >/dev/null 2>&1
}

console_has() {
    [ -f "$CONSOLE_LOG" ] && grep -q -- "$1" "$CONSOLE_LOG"
}

# Kill what the scenario left behind: its domains (only those it created: safe on a
# real host with other domains) and its xl monitor processes.
cleanup_scenario() {
    local name pid
    if [ -f "$WORK/domains" ]; then
        for name in $(sort -u "$WORK/domains"); do
            if ! domain_gone "$name"; then
                timeout 30 xl destroy "$name" >>"$WORK/tools.log" 2>&1 || true
            fi
        done
    fi
    if [ -f "$WORK/monitors" ]; then
        for pid in $(cat "$WORK/monitors"); do
            kill "$pid" 2>/dev/null || true
        done
    fi
}
