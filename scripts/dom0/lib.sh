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

# A measurement the host report shows: XENCI <nonce> INFO <scenario> key=value
info() {
    echo "XENCI $XENCI_NONCE INFO $SCENARIO $*" >&3
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

# The last lines of the subject's console log, as `XENCI <nonce> LOG <scenario> | line`, so the
# host report can print them under a failure. Falls back to the hypervisor's copy of the
# guest's port-0xE9 output (`(dN) ...` in xl dmesg) when the console log is empty.
show_guest_log() {
    local n=${1:-15}
    {
        if [ -n "${CONSOLE_LOG:-}" ] && [ -s "$CONSOLE_LOG" ]; then
            tail -n "$n" "$CONSOLE_LOG" | sed "s/^/XENCI $XENCI_NONCE LOG $SCENARIO | /"
        elif [ -n "${DOMID:-}" ]; then
            xl dmesg 2>/dev/null | grep "(d$DOMID)" | tail -n "$n" | sed "s/^/XENCI $XENCI_NONCE LOG $SCENARIO | /"
        fi
        if [ -n "${XL_LOG:-}" ] && [ -s "$XL_LOG" ]; then
            tail -n 5 "$XL_LOG" | sed "s/^/XENCI $XENCI_NONCE LOG $SCENARIO | xl: /"
        fi
    } >&3
}

# One point of the run's memory timeline, drawn by `xenci plot` from the serial log:
#   XENCI SAMPLE <scenario> t=<uptime cs> dom=<name> mib=<N>         Xen's tot_pages (MiB)
#   XENCI SAMPLE <scenario> t=<uptime cs> dom=<name> target_mib=<N>  the target from then on
# The mib points come from polls the scenario makes anyway (near_target_mib, and
# wait_reach's xen-dominfo), so the picture costs no extra call and does not slow down
# what the scenario measures.
sample() {
    echo "XENCI SAMPLE $SCENARIO t=$(now_cs) dom=$DOMNAME $*" >&3
}

# The operator's view of domain $1 (scripts/xenguest-stat), onto the serial log as
# `xenci[<scenario>] stat | <line>`; returns the tool's exit status.
show_stat() {
    local bin=$REPO/target/release/xenguest-stat rc
    [ -x "$bin" ] || { say "stat | (no $bin in this dom0)"; return 0; }
    "$bin" "$1" >"$WORK/stat.out" 2>&1
    rc=$?
    sed "s/^/xenci[$SCENARIO] stat | /" "$WORK/stat.out" >&3
    return "$rc"
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
    XL_LOG=$WORK/xl-create-$DOMNAME.log
    rm -f "$CONSOLE_LOG"
    echo "$DOMNAME" >>"$WORK/domains"
    # A +vcpusN variant (run-scenarios): N vCPUs unless the scenario chose its own.
    if [ -n "${XENCI_VCPUS:-}" ]; then
        case " $* " in
            *" vcpus="*) ;;
            *) set -- "vcpus=$XENCI_VCPUS" "$@" ;;
        esac
    fi
    # The lines beyond the config file, for a copy restored under another name.
    printf '%s\n' "$@" >"$WORK/extra-$DOMNAME.cfg"
    CREATE_CS=$(now_cs)
    # CREATE_PAUSED=1: `xl create -p` (the caller unpauses).
    say "xl create -F ${CREATE_PAUSED:+-p }$(subject_cfg) name=\"$DOMNAME\" $*"
    (cd "$REPO" && exec xl create -F ${CREATE_PAUSED:+-p} "$(subject_cfg)" "name=\"$DOMNAME\"" "$@") \
        >"$XL_LOG" 2>&1 &
    MONITOR=$!
    echo "$MONITOR" >>"$WORK/monitors"
    # CREATE_QUIET=SECS (benchmarks that time the boot on Xen's stamps): stay off the one
    # emulated CPU while the domain boots. The polls below start a process every 0.2 s,
    # a few ms of dom0 each under TCG, which the booting guest would wait for.
    [ -n "${CREATE_QUIET:-}" ] && sleep "$CREATE_QUIET"
    # xl -F logs "Waiting for domain NAME (domid N) to die" once the domain runs; reading
    # it there also works for a domain that is gone again before `xl domid` could see it.
    DOMID=
    wait_for 60 "domain $DOMNAME to be created" created_domid \
        || fail "xl create did not create domain $DOMNAME: $(tail -n 3 "$XL_LOG" | tr '\n' ' ')"
    DOMID=$(created_domid)
    say "domain $DOMNAME has domid $DOMID"
    # For run-scenarios' watchdog, which cannot see this subshell's variables.
    echo "$CONSOLE_LOG" >"$WORK/console-log"
    echo "$XL_LOG" >"$WORK/xl-log"
    echo "$DOMID" >"$WORK/domid"
}

# Scenarios with two domains: `remember_domain G` after creating one saves its DOMNAME,
# DOMID, CONSOLE_LOG and XL_LOG as G_*; `use_domain G` makes it the domain under test
# again for every helper here.
remember_domain() {
    eval "${1}_NAME=\$DOMNAME ${1}_ID=\$DOMID ${1}_LOG=\$CONSOLE_LOG ${1}_XL=\$XL_LOG"
}

use_domain() {
    eval "DOMNAME=\$${1}_NAME DOMID=\$${1}_ID CONSOLE_LOG=\$${1}_LOG XL_LOG=\$${1}_XL"
    echo "$CONSOLE_LOG" >"$WORK/console-log"
    echo "$DOMID" >"$WORK/domid"
}

# The domid xl -F reports for the domain it created last; fails (so wait_for keeps
# waiting) until there is one, and fails the scenario when xl exited without one.
created_domid() {
    local d
    d=$(sed -n 's/.*Waiting for domain .* (domid \([0-9]*\)) to die.*/\1/p' "$XL_LOG" | tail -n 1)
    if [ -n "$d" ]; then
        echo "$d"
        return 0
    fi
    kill -0 "$MONITOR" 2>/dev/null \
        || fail "xl create failed: $(grep -v '^Parsing config' "$XL_LOG" | tail -n 2 | tr '\n' ' ')"
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
    local t
    t=$(dom_read memory/target) && sample "target_mib=$((t / 1024))"
    near_target_mib 0 || true
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
    sed -n 's/.*has shut down, reason code \([0-9]*\).*/\1/p' "$XL_LOG" | tail -n 1
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

# The `xl debug-keys q` dump this call requests, and only that one: Xen heads each dump
# with "'q' pressed -> dumping domain info (now = <Xen ns>)", so the fresh dump is the last
# one whose `now` is later than every dump already in Xen's console ring (an older dump,
# or one half overwritten by the ring wrapping, can never be read as the new one). Prints
# Xen's own lines from that header on; fails when there is none. Only lines Xen printed
# count ("(XEN) ..."; a guest's port-0xE9 text arrives as "(dN) ...", so a guest cannot
# forge a dump header or its own page counts).
fresh_q_dump() {
    local before
    before=$(xen_lines | q_dump_times | tail -n 1)
    xl debug-keys q >/dev/null 2>&1 || return 1
    xen_lines | awk -v before="${before:-0}" '
        /pressed -> dumping domain info \(now = [0-9]+\)/ {
            t = $0; sub(/.*\(now = /, "", t); sub(/\).*/, "", t)
            if (t + 0 > before + 0) { fresh = 1; buf = "" } else fresh = 0
        }
        fresh { buf = buf $0 "\n" }
        END { if (buf == "") exit 1; printf "%s", buf }'
}

# Xen's own lines in its console ring.
xen_lines() {
    xl dmesg 2>/dev/null | grep '^(XEN) '
}

# Xen's console timestamp (console_timestamps=boot: "(XEN) [   12.345678] ...") of each
# line on stdin.
xen_stamp() {
    sed -n 's/^(XEN) \[ *\([0-9]*\.[0-9]*\)\].*/\1/p'
}

# The complete `xl debug-keys g` dump this call requests (fresh: its header is stamped
# later than Xen's last line before the request), without Xen's prefix and timestamps.
# Xen 4.17 (common/grant_table.c, gnttab_usage_print_all) prints, per domain R:
#   gnttab_usage_print_all [ key 'g' pressed
#         -------- active --------       -------- shared --------
#   [ref] localdom mfn      pin          localdom gmfn     flags
#   grant-table for remote d<R> (v1)
#     <n> frames (<max> max), <n> maptrack frames (<max> max)
#   [0x<ref>]  <mapping domid> 0x<mfn> 0x<pin>      <grantee domid> 0x<gfn> 0x<flags>
#     ... one line per active (pinned) entry of R's table, or
#   no active grant table entries
#   gnttab_usage_print_all ] done
# pin counts mappings: 0x100 per read-only host mapping, 0x1 per writable one.
fresh_g_dump() {
    local before
    before=$(xen_lines | tail -n 1 | xen_stamp)
    [ -n "$before" ] || return 1
    xl debug-keys g >/dev/null 2>&1 || return 1
    xen_lines | awk -v before="$before" '
        { t = $0; sub(/^\(XEN\) \[ */, "", t); sub(/\].*/, "", t)
          line = $0; sub(/^\(XEN\) \[[^]]*\] ?/, "", line) }
        /gnttab_usage_print_all \[ key/ { if (t + 0 > before + 0) { on = 1; buf = "" } else on = 0 }
        on { buf = buf line "\n" }
        on && /gnttab_usage_print_all \] done/ { got = buf; on = 0 }
        END { if (got == "") exit 1; printf "%s", got }'
}

# xen_grant_maps R M: Xen's own view of domain R's grant table, from a fresh `g` dump:
# "<n> <pins>", how many of R's entries are pinned by M's mappings and their distinct pin
# values ("-" for none); "absent" when Xen has no domain R. Fails without a fresh dump.
xen_grant_maps() {
    local dump
    dump=$(fresh_g_dump) || return 1
    echo "$dump" | awk -v r="$1" -v m="$2" '
        /^grant-table for remote d/ { sec = ($4 == "d" r); if (sec) seen = 1; next }
        sec && /^\[0x[0-9a-f]+\]/ && $2 == m {
            n++
            if (!($4 in p)) { p[$4] = 1; pins = pins (pins == "" ? "" : ",") $4 }
        }
        END { if (!seen) { print "absent"; exit } print n + 0, (pins == "" ? "-" : pins) }'
}

# expect_xen_maps LABEL WANT [PIN]: Xen's `g` dump shows exactly WANT entries of the
# granter's (G_ID) table pinned by the mapper (M_ID) — "absent": no granter at all —
# each with pin PIN when given (0x00000100 read-only, 0x00000001 writable).
expect_xen_maps() {
    local label=$1 want=$2 pin=${3:-} got
    got=$(xen_grant_maps "$G_ID" "$M_ID") || fail "$label: no fresh 'xl debug-keys g' dump from Xen"
    info "${label}_xen_grant_maps d${G_ID}_by_d${M_ID}=${got% *} pins=${got#* }"
    [ "${got%% *}" = "$want" ] \
        || fail "$label: Xen's grant table of d$G_ID shows '$got' entries pinned by d$M_ID, want $want"
    [ -z "$pin" ] || [ "${got#* }" = "$pin" ] \
        || fail "$label: Xen shows pins '${got#* }' for d$M_ID's mappings, want $pin"
}

# xen_domain_dying D: Xen's `dying` for domain D from a fresh `q` dump (0 alive, 1 dying,
# 2 dead but still referenced: a zombie), "absent" when Xen no longer lists it. Fails
# (prints nothing) without a fresh dump: a failed tool call is never "gone".
xen_domain_dying() {
    local dump
    dump=$(fresh_q_dump) || return 1
    echo "$dump" | awk -v d="$1" '
        index($0, "General information for domain " d ":") { grab = 1; found = 1; next }
        grab && /dying=/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^dying=/) { sub(/^dying=/, "", $i); print $i }
            grab = 0
        }
        END { if (!found) print "absent" }'
}

# The `now` of every 'q' dump header in the text on stdin, in order.
q_dump_times() {
    sed -n "s/.*'q' pressed -> dumping domain info (now = \([0-9]*\)).*/\1/p"
}

# Exact page counts of domain $1 from Xen (xl list rounds to MiB; HARNESS-NOTES 14):
# prints "tot_pages max_pages" from the `xl debug-keys q` dump it requests.
domain_pages() {
    local dump
    dump=$(fresh_q_dump) || return 1
    echo "$dump" | awk -v d="$1" '
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
    # Save images (save-*, a failed migration's leftovers): dom0's root is RAM.
    rm -f "$WORK"/*.img
}

# ---------------------------------------------------------------- memory and the balloon
# Helpers for the mm-* and balloon-* scenarios. Units: Xen counts 4 KiB pages, xenstore's
# memory/target is KiB, `xl mem-set`/`xl list` speak MiB. "At target" as judged from Xen
# (the same measure for our guest and the Linux peer): tot_pages within 1 MiB of the target.

# wait_every STEP SECONDS DESCRIPTION COMMAND...: wait_for with a poll interval of STEP
# seconds, for conditions that are costly to evaluate (an `xl debug-keys q` each).
wait_every() {
    local step=$1 secs=$2 what=$3 deadline
    shift 3
    deadline=$(($(now_cs) + secs * 100))
    while ! "$@" >/dev/null 2>&1; do
        if [ "$(now_cs)" -ge "$deadline" ]; then
            say "timeout after ${secs}s waiting for $what"
            return 1
        fi
        sleep "$step"
    done
}

# A key of the domain under test in xenstore, relative to /local/domain/$DOMID.
dom_read() {
    xenstore-read "/local/domain/$DOMID/$1" 2>/dev/null
}

# The guest's own reports (README "The guest contract"): data/mm/*, data/balloon/*.
data_read() {
    dom_read "data/$1"
}

# Write a raw value to the domain's memory/target (KiB) behind the toolstack's back, as a
# buggy or hostile toolstack could. `--`: a value like -5 is not an option (HARNESS-NOTES 13).
write_target() {
    echo "+ xenstore-write memory/target '$1'" >>"$WORK/tools.log"
    xenstore-write -- "/local/domain/$DOMID/memory/target" "$1" 2>>"$WORK/tools.log"
}

# Xen's exact view of domain $1 from the `xl debug-keys q` dump it requests (fresh_q_dump):
# prints "tot_pages max_pages pod_entries pod_cache" (the PoD numbers are 0 without PoD).
domain_mem() {
    local dump
    dump=$(fresh_q_dump) || return 1
    echo "$dump" | awk -v d="$1" '
        index($0, "General information for domain " d ":") {
            grab = 1; tot = ""; max = ""; ents = 0; cache = 0; next
        }
        grab && index($0, "General information for domain ") { grab = 0 }
        grab && /pages=/ {
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^(tot|nr)_pages=/) { sub(/.*=/, "", $i); tot = $i }
                if ($i ~ /^max_pages=/) { sub(/.*=/, "", $i); max = $i }
            }
        }
        grab && /PoD entries=/ {
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^entries=/) { sub(/.*=/, "", $i); ents = $i }
                if ($i ~ /^cachesize=/) { sub(/.*=/, "", $i); cache = $i }
            }
            grab = 0
        }
        END { if (tot == "") exit 1; print tot, max, ents, cache }'
}

# xl list's Mem column of the domain under test: floor(tot_pages / 256) MiB.
domain_mib() {
    xl list "$DOMNAME" 2>/dev/null | awk 'NR == 2 { print $3 }'
}

# Xen's CPU seconds for the domain under test (xl list's Time(s), 0.1 s resolution).
domain_cpu_secs() {
    xl list "$DOMNAME" 2>/dev/null | awk 'NR == 2 { print $6 }'
}

# Cheap test, fit for polling: is tot_pages within 1 MiB of MIB MiB? An `xl list` Mem of
# MIB or MIB-1 means MIB*1024-1024 <= tot_kib < MIB*1024+1024.
near_target_mib() {
    local m
    m=$(domain_mib)
    [ -n "$m" ] && sample "mib=$m"
    [ -n "$m" ] && [ "$m" -ge $(($1 - 1)) ] && [ "$m" -le "$1" ]
}

# The exact version of near_target_mib (one `xl debug-keys q`): sets TOT MAX POD_ENTRIES
# POD_CACHE and fails when |tot_pages*4 - MIB*1024| > 1024 KiB.
exact_near_target_mib() {
    local mem d
    mem=$(domain_mem "$DOMID") || return 1
    set -- "$1" $mem
    TOT=$2 MAX=$3 POD_ENTRIES=$4 POD_CACHE=$5
    d=$((TOT * 4 - $1 * 1024))
    [ "$d" -ge -1024 ] && [ "$d" -le 1024 ]
}

# A PoD domain is safe once every outstanding PoD entry has a page in its cache (Xen
# kills a domain that touches a PoD entry it cannot back). Sets the same variables.
pod_balanced() {
    local mem
    mem=$(domain_mem "$DOMID") || return 1
    set -- $mem
    TOT=$1 MAX=$2 POD_ENTRIES=$3 POD_CACHE=$4
    [ "$POD_ENTRIES" -le "$POD_CACHE" ]
}

# Fail at once when the domain crashed or vanished: a PoD guest touching more than its
# target is killed by Xen ("out of PoD memory" in xl dmesg).
check_alive() {
    local st pod
    st=$(domain_state "$DOMNAME")
    case $st in
        *c* | '')
            pod=$(xen_lines | grep -m1 "Dom$DOMID out of PoD memory" | sed 's/^(XEN) *\[[^]]*\] *//')
            if [ -n "$pod" ]; then
                # A scenario may declare this a known limitation of the Linux peer.
                [ "$SUBJECT" = linux ] && [ -n "${LINUX_POD_KILL_SKIP:-}" ] \
                    && { info "linux_killed=yes"; skip "$LINUX_POD_KILL_SKIP: $pod"; }
                fail "Xen killed the domain: $pod"
            fi
            [ -n "$st" ] && fail "domain crashed: $(panic_line || echo 'no PANIC line in the console log')"
            fail "domain vanished (shutdown reason: $(reason_name "$(shutdown_reason)"))"
            ;;
    esac
}

# wait_reach MIB SECONDS [FROM_CS]: wait until Xen's tot_pages is within 1 MiB of MIB,
# failing at once on a crash. dom0 asks Xen directly (target/release/xen-dominfo: one
# XEN_DOMCTL_getdomaininfo every XENCI_POLL_MS=10 ms, ~50 us each), not `xl list` every
# 0.1 s, which took about half of the one emulated CPU away from the domain being timed.
# Sets REACH_CS (centiseconds from FROM_CS, default the call, to the poll that saw it)
# and TOT/MAX/POD_* (confirmed with the exact `xl debug-keys q` count). The tool's
# thinned samples go to the serial log as SAMPLE lines (the timeline pictures).
wait_reach() {
    local t0
    t0=${3:-$(now_cs)}
    wait_reach_start "$1" "$2"
    wait_reach_end "$t0"
}

# The two halves of wait_reach, for a wait started before the action it times
# (balloon_step: the poller is running before `xl mem-set`, so its start-up, ~0.07 s of
# the one CPU under TCG, is not spent while the step it measures runs).
wait_reach_start() {
    local n=0
    WAIT_MIB=$1 WAIT_SECS=$2
    "$REPO/target/release/xen-dominfo" "$DOMID" --wait-kib $(($1 * 1024)) --timeout "$2" \
        --every-ms "${XENCI_POLL_MS:-10}" >"$WORK/wait.out" 2>>"$WORK/tools.log" &
    WAIT_PID=$!
    # Its first poll always prints a line: from then on it is polling.
    while [ ! -s "$WORK/wait.out" ] && kill -0 "$WAIT_PID" 2>/dev/null && [ "$n" -lt 500 ]; do
        sleep 0.01
        n=$((n + 1))
    done
}

# Stop a started wait without collecting it (the action it was to time failed).
wait_reach_abandon() {
    [ -n "${WAIT_PID:-}" ] && kill "$WAIT_PID" 2>/dev/null && wait "$WAIT_PID" 2>/dev/null
    WAIT_PID=
}

wait_reach_end() {
    local mib=$WAIT_MIB secs=$WAIT_SECS t0=$1 rc at
    wait "$WAIT_PID"
    rc=$?
    WAIT_PID=
    sed -n 's/^sample t=\([0-9]*\) mib=\([0-9]*\) .*/XENCI SAMPLE '"$SCENARIO"' t=\1 dom='"$DOMNAME"' mib=\2/p' \
        "$WORK/wait.out" >&3
    case $rc in
        0) ;;
        3) check_alive; fail "the domain went away while waiting for $mib MiB: $(tail -n 1 "$WORK/wait.out")" ;;
        1)
            domain_mem "$DOMID" >"$WORK/mem" 2>/dev/null
            fail "Xen's tot_pages not within 1 MiB of $mib MiB ${secs}s after the request: $(tail -n 1 "$WORK/wait.out") (xl debug-keys q: tot max pod_entries pod_cache: $(cat "$WORK/mem"))"
            ;;
        *) fail "xen-dominfo failed (exit $rc): $(tail -n 1 "$WORK/tools.log")" ;;
    esac
    at=$(sed -n 's/^reached t=\([0-9]*\) .*/\1/p' "$WORK/wait.out")
    [ -n "$at" ] || fail "xen-dominfo said reached without a time: $(tail -n 2 "$WORK/wait.out")"
    # A wait started before the action may see the target before its clock starts.
    REACH_CS=$((at > t0 ? at - t0 : 0))
    exact_near_target_mib "$mib" \
        || fail "xen-dominfo saw $mib MiB but the exact tot_pages by xl debug-keys q is $TOT ($((TOT * 4)) KiB, target $((mib * 1024)) KiB)"
}

# xl mem-set the domain under test to MIB MiB (this also lowers Xen's maxmem to the new
# target + slack; DESIGN.md §4). Records MEMSET_CS.
mem_set() {
    # Where the domain stands as the target moves (before the clock starts: not timed).
    near_target_mib "$1" || true
    MEMSET_CS=$(now_cs)
    sample "target_mib=$1"
    tool xl mem-set "$DOMNAME" "${1}m" \
        || { wait_reach_abandon; fail "xl mem-set $DOMNAME ${1}m failed: $(tail -n 1 "$WORK/tools.log")"; }
}

# Our guest only: the balloon reports it has settled at TARGET_KIB (its effective target)
# with state STATE (default done).
balloon_settled() {
    local want=$1 state=${2:-done} st cur eff
    st=$(data_read balloon/state) || return 1
    cur=$(data_read balloon/current-kib) || return 1
    eff=$(data_read balloon/effective-target-kib) || return 1
    [ "$st" = "$state" ] && [ "$eff" = "$want" ] && [ "$cur" = "$want" ]
}

# The balloon's status in one line, for reasons and the log.
balloon_status() {
    local k out=
    for k in state target-kib effective-target-kib current-kib floor-kib rejected-targets \
        hypercalls accounting/mismatches last-error; do
        out="$out $k=$(data_read "balloon/$k" || echo '?')"
    done
    echo "${out# }"
}

# Our guest only: the guest's own cross-check of its books against Xen. Either form:
#   data/balloon/accounting = "ok" (or "mismatch: ...")
#   data/balloon/accounting/{offset-pages,delta-pages,mismatches}: 0 mismatches and the
#   last measured tot_pages - RAM (delta) equal to the one at init (offset)
balloon_accounting_ok() {
    local acc off del
    acc=$(data_read balloon/accounting) || return 1
    if [ -n "$acc" ]; then
        [ "$acc" = ok ]
        return
    fi
    [ "$(data_read balloon/accounting/mismatches)" = 0 ] || return 1
    off=$(data_read balloon/accounting/offset-pages)
    del=$(data_read balloon/accounting/delta-pages)
    [ -n "$off" ] && [ "$off" = "$del" ]
}

balloon_accounting() {
    echo "accounting='$(data_read balloon/accounting || echo '(missing)')'" \
        "offset-pages=$(data_read balloon/accounting/offset-pages || echo '?')" \
        "delta-pages=$(data_read balloon/accounting/delta-pages || echo '?')" \
        "mismatches=$(data_read balloon/accounting/mismatches || echo '?')"
}

# Every leaf under data/balloon/SUBDIR as "a/b=v,c/d=w" (e.g. the extents by order).
balloon_tree() {
    xenstore-ls -f "/local/domain/$DOMID/data/balloon/$1" 2>/dev/null \
        | sed -n "s|^/local/domain/$DOMID/data/balloon/$1/||; s/ = \"\(.*\)\"\$/=\1/p" \
        | grep -v '=$' | tr '\n' ',' | sed 's/,$//'
}

# Our guest only: the balloon driver publishes data/balloon (contract). Fails if not.
require_balloon() {
    wait_for "${1:-15}" "data/balloon/state" data_read balloon/state \
        || fail "no data/balloon/state from the guest $((${1:-15}))s after ready (balloon driver not running?)"
}

# Our guest only: the guest's census and Xen agree exactly, after a settle. Xen's tot_pages
# must equal data/mm/expected-tot-pages (= pages/ram + pages Xen accounts outside the RAM
# map - 1), and current-kib must be pages/ram * 4. The guest republishes data/mm after each
# settle, so this waits (an `xl debug-keys q` per second) up to SECONDS for them to agree.
# Reports the raw difference tot_pages - pages/ram.
census_matches_xen() {
    local mem exp ram cur
    mem=$(domain_mem "$DOMID") || return 1
    set -- $mem
    TOT=$1 MAX=$2
    exp=$(data_read mm/expected-tot-pages) || return 1
    ram=$(data_read mm/pages/ram) || return 1
    CENSUS="xen tot_pages=$TOT max_pages=$MAX, guest expected-tot-pages=$exp pages/ram=$ram"
    [ "$TOT" = "$exp" ] || return 1
    # Before the balloon driver exists there is no current-kib to compare.
    if cur=$(data_read balloon/current-kib); then
        CENSUS="$CENSUS current-kib=$cur"
        [ "$cur" = $((ram * 4)) ] || return 1
    fi
    CENSUS_RAW_DIFF=$((TOT - ram))
}

check_census() {
    local secs=${1:-10} label=${2:-}
    if ! wait_every 1 "$secs" "census == Xen" census_matches_xen; then
        census_matches_xen
        fail "${label:+$label: }census and Xen disagree after ${secs}s: $CENSUS"
    fi
    info "${label:+${label}_}tot_pages=$TOT expected_tot_pages=$TOT raw_diff=$CENSUS_RAW_DIFF"
}

# balloon_step LABEL MIB SECONDS: xl mem-set to MIB and wait until Xen shows the domain
# within 1 MiB of it (fail after SECONDS); report LABEL_secs (from starting `xl mem-set` to
# reached, the same measure for both subjects). Our guest: then the balloon must say done at exactly the
# target and its census must match Xen. The Linux peer: report its exact offset from the
# target (HARNESS-NOTES: it settles at target + 16 pages).
balloon_step() {
    local label=$1 mib=$2 secs=$3
    say "$label: xl mem-set ${mib}m"
    wait_reach_start "$mib" "$secs"
    mem_set "$mib"
    wait_reach_end "$MEMSET_CS"
    info "${label}_secs=$(fmt_cs "$REACH_CS") target_mib=$mib tot_pages=$TOT"
    balloon_settled_at "$label" "$mib"
}

# The subject-specific half of balloon_step, also used after boot: our guest's own report
# must say done at exactly MIB and its census must match Xen; for Linux, the settled
# tot_pages offset from the target is reported.
balloon_settled_at() {
    local label=$1 mib=$2 ms
    case $SUBJECT in
        guest)
            if ! wait_for 30 "balloon done at $mib MiB" balloon_settled $((mib * 1024)); then
                check_alive
                fail "$label: Xen shows the target but the guest does not report done at $((mib * 1024)) KiB: $(balloon_status)"
            fi
            check_census 10 "$label"
            # The guest's own timing of the step (contract: "balloon: target <K> KiB reached
            # in <ms> ms"), beside the Xen-side measure.
            ms=$(sed -n "s/.*balloon: target $((mib * 1024)) KiB reached in \([0-9]*\) ms.*/\1/p" "$CONSOLE_LOG" | tail -n 1)
            info "${label}_guest_reported_ms=${ms:-none}"
            balloon_accounting_ok \
                || fail "$label: the guest's own accounting check is not clean: $(balloon_accounting)"
            ;;
        linux)
            # Linux keeps working a little after Xen's count is within 1 MiB; give it a
            # moment to settle, then report where it stopped.
            linux_settled() {
                local a b
                a=$(domain_mem "$DOMID") || return 1
                sleep 1
                b=$(domain_mem "$DOMID") || return 1
                [ "$a" = "$b" ]
            }
            # A Linux killed by Xen meanwhile (PoD) ends here as check_alive says: the
            # scenario's declared SKIP with Xen's own line, or a failure.
            if ! wait_for 20 "Linux to settle" linux_settled; then
                check_alive
                fail "$label: Linux's page count still moving 20s after reaching $mib MiB (last: $(domain_mem "$DOMID" || echo 'no dump'))"
            fi
            if ! exact_near_target_mib "$mib"; then
                check_alive
                fail "$label: Linux settled at tot_pages=${TOT:-?}, more than 1 MiB from $mib MiB"
            fi
            info "${label}_linux_offset_pages=$((TOT - mib * 256))"
            ;;
    esac
}

# Xen's own view of the guest-physical frames of the domain under test: dom0 foreign-maps
# every gfn in [FIRST, FIRST+COUNT) through privcmd (target/release/gfn-probe; further
# arguments are its options: --marker, --absent-out, --only) and Xen maps
# only the ones its p2m holds as RAM (or frames Xen owns and maps there, e.g. our grant
# table in the device window). Sets XEN_GFNS (the tool's line: max_gpfn populated
# absent first last errors) and XEN_POPULATED.
xen_gfns() {
    XEN_GFNS=$("$REPO/target/release/gfn-probe" "$DOMID" "$@" 2>>"$WORK/tools.log") || return 1
    XEN_POPULATED=$(echo "$XEN_GFNS" | sed -n 's/.* populated=\([0-9]*\) .*/\1/p')
    [ -n "$XEN_POPULATED" ]
}

# check_xen_hot_ram LABEL PAGES: Xen's p2m holds exactly PAGES RAM frames of the domain in
# the GiB from the start of its hot-add window (data/hotplug/window/ram-start, which must
# lie above 4 GiB), contiguous from that start. Where the window is comes from the guest;
# what is RAM there, from Xen.
check_xen_hot_ram() {
    local label=$1 want=$2 start gfn
    start=$(data_read hotplug/window/ram-start) || fail "$label: no data/hotplug/window/ram-start"
    gfn=$((start / 4096))
    [ "$gfn" -ge $((0x100000)) ] || fail "$label: the hot-add window starts at $start, below 4 GiB"
    xen_gfns "$gfn" 0x40000 || fail "$label: gfn-probe failed: $(tail -n 1 "$WORK/tools.log")"
    info "${label}_xen_hot_window ram_start=$start $XEN_GFNS"
    [ "$XEN_POPULATED" = "$want" ] \
        || fail "$label: Xen maps $XEN_POPULATED RAM frames of d$DOMID in the GiB from $start (the hot-add window), want $want ($XEN_GFNS)"
    [ "$want" = 0 ] && return 0
    case $XEN_GFNS in
        *" first=$(printf '%#x' "$gfn") last=$(printf '%#x' $((gfn + want - 1))) "*) ;;
        *) fail "$label: Xen's RAM frames in the hot-add window are not contiguous from $start: $XEN_GFNS" ;;
    esac
}

# check_hotplugged N: the guest's census shows exactly N hot-added sections, all present,
# online and with every subsection active, and accounting still closes against Xen.
check_hotplugged() {
    local want=$1 present online active
    present=$(data_read mm/sections/hotplug-ram/present) || fail "no data/mm/sections/hotplug-ram/present"
    online=$(data_read mm/sections/hotplug-ram/online)
    active=$(data_read mm/subsections/hotplug-ram/active)
    info "hotplug_sections present=$present online=$online active_subsections=$active kib=$(data_read mm/kib/hotplug-ram)"
    [ "$present" = "$want" ] || fail "want $want hot-added sections present, census says $present"
    [ "$online" = "$want" ] || fail "want $want hot-added sections online, census says $online"
    [ "$active" = $((want * 64)) ] || fail "want $((want * 64)) active hot-added subsections, census says $active"
}

# ---------------------------------------------------------------- two guests and grants
# Helpers for the grant-* scenarios (README "Grant tables"): a granter G and a mapper M,
# both our kernel, introduced to each other the way a toolstack introduces split-driver
# ends: by writing the other's domid into each one's data/grant-test/peer.

# grant_pair PREFIX GIVE [XL-LINES...]: create granter PREFIX-g (grant=give:GIVE, e.g.
# 64 or 16:rw) and mapper PREFIX-m (grant=map, plus the words in $MAPPER_EXTRA), wait for
# both, introduce them. Sets G_* and M_*; M is the domain under test afterwards.
grant_pair() {
    grant_pair_create "$@"
    introduce G M
    introduce M G
}

# grant_pair_create: as grant_pair, without the introductions.
grant_pair_create() {
    local prefix=$1 give=$2
    shift 2
    create_domain "$prefix-g" 'memory=128' 'maxmem=128' "extra=\"loglevel=info grant=give:$give\"" "$@"
    remember_domain G
    wait_ready 90
    give_grant_nonce
    create_domain "$prefix-m" 'memory=128' 'maxmem=128' "extra=\"loglevel=info grant=map${MAPPER_EXTRA:+ $MAPPER_EXTRA}\"" "$@"
    remember_domain M
    wait_ready 90
    wait_for 15 "grant table on d$G_ID" gt_read G grant/refs || fail "granter d$G_ID publishes no data/grant (grant table setup failed?)"
    wait_for 15 "grant table on d$M_ID" gt_read M grant/refs || fail "mapper d$M_ID publishes no data/grant (grant table setup failed?)"
    info "table_frames=$(gt_read M grant/table-frames) max_table_frames=$(gt_read M grant/max-table-frames) refs=$(gt_read M grant/refs)"
}

# A fresh nonce in granter G's pattern (GRANT_NONCE), where only G can read it
# (data/grant-nonce: owner G, nobody else): a mapper can know it only from G's frames, so
# a checksum G verifies proves the mapper read them.
give_grant_nonce() {
    local perms
    GRANT_NONCE=$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')
    tool xenstore-write "/local/domain/$G_ID/data/grant-nonce" "$GRANT_NONCE" \
        || fail "cannot write d$G_ID's data/grant-nonce"
    perms=$(xenstore-ls -p "/local/domain/$G_ID/data" 2>/dev/null | sed -n 's/^grant-nonce = .*(\([^)]*\))$/\1/p')
    [ "$perms" = "n$G_ID" ] || fail "d$G_ID's data/grant-nonce has permissions '$perms', want n$G_ID (the granter only)"
}

# The mapper read the granter's frames: its pattern nonce (learnt from G's page 0) is the
# one dom0 gave G alone, and G's own check of M's checksum over the frames says ok.
check_pattern_nonce() {
    expect_gt M grant-test/pattern-nonce "$GRANT_NONCE" "nonce the mapper read in d$G_ID's frames"
    wait_for 10 "granter verified" gt_read G grant-test/verified \
        || fail "granter d$G_ID never read the mapper's checksum"
    expect_gt G grant-test/verified ok "granter's check of the mapper's checksum"
    info "pattern_nonce=$GRANT_NONCE verified=ok"
}

# introduce A B: tell role A (G or M) that its peer is B's domid.
introduce() {
    local a b
    a=$(eval echo "\$${1}_ID") b=$(eval echo "\$${2}_ID")
    say "introducing d$a ($1) to d$b ($2)"
    tool xenstore-write "/local/domain/$a/data/grant-test/peer" "$b" || fail "cannot write d$a's peer"
}

# gt_read G|M KEY: /local/domain/<G or M>/data/KEY.
gt_read() {
    eval "xenstore-read \"/local/domain/\$${1}_ID/data/$2\"" 2>/dev/null
}

# pair_state_is G|M STATE...: the role's data/grant-test/state is one of STATE.
pair_state_is() {
    local who=$1 st s
    shift
    st=$(gt_read "$who" grant-test/state) || return 1
    for s in "$@"; do [ "$st" = "$s" ] && return 0; done
    return 1
}

# wait_pair G|M SECONDS STATE...: wait for the role to reach one of STATE; fail with its
# published error otherwise (a "failed" state fails at once).
wait_pair() {
    local who=$1 secs=$2 deadline
    shift 2
    deadline=$(($(now_cs) + secs * 100))
    while ! pair_state_is "$who" "$@"; do
        if pair_state_is "$who" failed; then
            fail "$who (d$(eval echo \$${who}_ID)) failed: $(gt_read "$who" grant-test/error)"
        fi
        if [ "$(now_cs)" -ge "$deadline" ]; then
            fail "$who (d$(eval echo \$${who}_ID)) not in state $* after ${secs}s: state=$(gt_read "$who" grant-test/state || echo '(none)') error=$(gt_read "$who" grant-test/error || echo '-')"
        fi
        sleep 0.2
    done
}

# expect_eq WHAT GOT WANT
expect_eq() {
    [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
}

# The mapper's device range by census and by its own count: every Foreign page there is a
# grant mapping or one of our table frames; nothing in it is Reserved.
check_device_range() {
    local who=$1 want_mapped=$2 foreign frames mapped reserved
    # The census is republished after each handshake step; let it catch up.
    # On a timeout the exact checks below fail, each saying which number is off.
    wait_for 10 "census of $who" device_census_is "$who" "$want_mapped" \
        || say "census of $who not settled after 10s"
    foreign=$(gt_read "$who" mm/pages/device/foreign)
    reserved=$(gt_read "$who" mm/pages/device/reserved)
    frames=$(gt_read "$who" grant/table-frames)
    mapped=$(gt_read "$who" grant/foreign-mapped)
    info "${who}_device foreign=$foreign table_frames=$frames foreign_mapped=$mapped reserved=$reserved"
    expect_eq "$who foreign-mapped" "$mapped" "$want_mapped"
    expect_eq "$who census pages/device/foreign" "$foreign" $((frames + want_mapped))
    expect_eq "$who census pages/device/reserved" "$reserved" 0
}

device_census_is() {
    local f
    f=$(gt_read "$1" grant/table-frames) || return 1
    [ "$(gt_read "$1" grant/foreign-mapped)" = "$2" ] \
        && [ "$(gt_read "$1" mm/pages/device/foreign)" = $((f + $2)) ]
}

# expect_gt G|M KEY WANT WHAT: the role's data/KEY becomes WANT within 5 s. The guest
# republishes data/grant/ right after a handshake step, a moment after its state.
expect_gt() {
    wait_for 5 "$4" gt_is "$1" "$2" "$3" || fail "$4: got '$(gt_read "$1" "$2")', want '$3'"
}

gt_is() {
    [ "$(gt_read "$1" "$2")" = "$3" ]
}

# ---------------------------------------------------------------- save, restore, migrate
# Helpers for the save-* and migrate-* scenarios (README "Save, restore and migration").

# The domain under test got a new domid (restore, migration): find it by name and make it
# the domain every helper looks at. Fails if the name is gone or did not change domid.
adopt_new_domid() {
    local what=$1 old=$DOMID new
    new=$(xl domid "$DOMNAME" 2>/dev/null) || fail "$what: no domain $DOMNAME afterwards"
    [ "$new" != "$old" ] || fail "$what: $DOMNAME still has domid $old"
    DOMID=$new
    echo "$DOMID" >"$WORK/domid"
    say "$what: $DOMNAME is now domid $DOMID"
}

# After `xl migrate`: as adopt_new_domid; the receiving domain was called NAME--incoming
# while xenconsoled first saw it, so its console log is guest-NAME--incoming.log.
adopt_migrated_domid() {
    adopt_new_domid "$1"
    CONSOLE_LOG=$CONSOLE_DIR/guest-$DOMNAME--incoming.log
    echo "$CONSOLE_LOG" >"$WORK/console-log"
}

# After a restore or migration: the domain runs (Xen's view), and our guest says it is
# ready again in its new domain; then its census matches Xen.
wait_resumed() {
    local what=$1 secs=${2:-60}
    check_alive
    if [ "$SUBJECT" = guest ]; then
        wait_for "$secs" "ready in domid $DOMID" ready_seen \
            || fail "$what: no ready marker from $DOMNAME in its new domain $DOMID within ${secs}s"
        require_balloon
    fi
}

# Bytes in FILE (busybox stat has -c).
file_bytes() {
    stat -c %s "$1" 2>/dev/null || wc -c <"$1"
}

# save_and_restore LABEL: `xl save` the domain under test (it must be gone afterwards),
# `xl restore` the image, and wait until it runs (ours: ready) in its new domain. Reports
# LABEL_save_secs, LABEL_image_bytes, LABEL_restore_secs. The image is deleted at once:
# dom0's root is RAM.
save_and_restore() {
    local label=$1 img=$WORK/$1.img t0
    t0=$(now_cs)
    tool xl save "$DOMNAME" "$img" || fail "$label: xl save failed: $(tail -n 2 "$WORK/tools.log" | tr '\n' ' ')"
    info "${label}_save_secs=$(fmt_cs $(($(now_cs) - t0))) ${label}_image_bytes=$(file_bytes "$img")"
    domain_gone "$DOMNAME" || fail "$label: xl save returned but $DOMNAME still exists"
    t0=$(now_cs)
    tool xl restore "$img" || fail "$label: xl restore failed: $(tail -n 2 "$WORK/tools.log" | tr '\n' ' ')"
    info "${label}_restore_secs=$(fmt_cs $(($(now_cs) - t0)))"
    rm -f "$img"
    adopt_new_domid "$label"
    wait_resumed "$label"
    if [ "$SUBJECT" = guest ]; then
        # The guest's own split: request -> SHUTDOWN_suspend (incl. the hand-back), and
        # resume -> connections restored.
        wait_for 10 "data/suspend" data_read suspend/last-quiesce-us \
            || fail "$label: no data/suspend/ republished in the new domain"
        info "${label}_guest_quiesce_us=$(data_read suspend/last-quiesce-us || echo '?') ${label}_guest_resume_us=$(data_read suspend/last-resume-us || echo '?') ${label}_handed_back_pages=$(data_read suspend/handed-back-pages || echo '?')"
    fi
}

# migrate_here LABEL: live-migrate the domain under test on this host (an empty ssh
# command makes xl run the "host" argument as the receiving command) and wait until it
# runs (ours: ready) in its new domain. Sets MIGRATE_CS; reports LABEL_migrate_secs.
migrate_here() {
    local t0
    t0=$(now_cs)
    tool xl migrate -s '' "$DOMNAME" 'xl migrate-receive' \
        || fail "$1: xl migrate failed: $(tail -n 3 "$WORK/tools.log" | tr '\n' ' ')"
    MIGRATE_CS=$(($(now_cs) - t0))
    info "${1}_migrate_secs=$(fmt_cs "$MIGRATE_CS")"
    adopt_migrated_domid "$1"
    wait_resumed "$1"
}

# A copy of the subject's xl config with another name, for restoring a second copy.
renamed_cfg() {
    local out=$WORK/$1.cfg
    sed "s/^name *=.*/name = \"$1\"/" "$REPO/$(subject_cfg)" >"$out"
    # The domain under test's own extra lines (memory, vcpus, ...): Xen refuses to load
    # an image's vCPU or LAPIC record into a domain with fewer vCPUs.
    [ ! -f "$WORK/extra-$DOMNAME.cfg" ] || cat "$WORK/extra-$DOMNAME.cfg" >>"$out"
    echo "$out"
}

# expect_data KEY VALUE: our guest's data/KEY is VALUE (waits up to 10 s: it republishes).
expect_data() {
    wait_for 10 "data/$1 = $2" data_is "$1" "$2" \
        || fail "data/$1 is '$(data_read "$1" || echo missing)', want '$2'"
}

data_is() {
    [ "$(data_read "$1")" = "$2" ]
}

# Xen's exact tot_pages of the domain under test (fails the scenario if there is no view).
xen_tot_pages() {
    local mem
    mem=$(domain_mem "$DOMID") || fail "no Xen view (xl debug-keys q) of $DOMNAME (domid $DOMID)"
    echo "${mem%% *}"
}

# ---------------------------------------------------------------- benchmarks
# Helpers for the bench-* scenarios (scripts/bench). Boot times are read from Xen's own
# console stamps (console_timestamps=boot: "(XEN) [   12.345678] ...", and a guest's
# port-0xE9 lines as "(dN) [   12.345678] ..."), so polling rates do not enter them.

# Xen's stamp of the last line in its console ring (any source).
xen_last_stamp() {
    xl dmesg 2>/dev/null | sed -n 's/^([^)]*) \[ *\([0-9]*\.[0-9]*\)\].*/\1/p' | tail -n 1
}

# bench_create NAME [XL-LINES...]: `xl debug-keys t` (Xen prints a line or two of its own,
# stamped), then create_domain at once. The key's stamp is the start of the boot
# measures (bench_anchor reads it afterwards, so no `xl dmesg` runs in between).
bench_create() {
    BENCH_BEFORE=$(xen_last_stamp)
    xl debug-keys t >/dev/null 2>&1
    create_domain "$@"
}

# Xen's stamp of its first own line after BENCH_BEFORE: the debug key's output.
bench_anchor() {
    xl dmesg 2>/dev/null | awk -v b="${BENCH_BEFORE:-0}" '
        /^\(XEN\) \[ *[0-9]+\.[0-9]+\]/ {
            t = $0; sub(/^\(XEN\) \[ */, "", t); sub(/\].*/, "", t)
            if (t + 0 > b + 0) { print t; exit }
        }'
}

# e9_stamp [REGEX]: Xen's stamp of the first port-0xE9 line of domain $DOMID (matching
# REGEX). Fails when there is none yet.
e9_stamp() {
    xl dmesg 2>/dev/null | awk -v d="(d$DOMID) [" -v re="${1:-.}" '
        index($0, d) == 1 && $0 ~ re {
            t = $0; sub(/^\(d[0-9]+\) \[ */, "", t); sub(/\].*/, "", t); print t; found = 1; exit
        }
        END { if (!found) exit 1 }'
}

# secs_between A B: B - A (seconds with 3 decimals); "-" if either is missing.
secs_between() {
    if [ -z "$1" ] || [ -z "$2" ]; then
        echo -
        return
    fi
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'
}

# wait_fast SECS COMMAND...: wait_for with a 0.05 s poll, for cheap conditions (a file
# test) whose moment is the measure.
wait_fast() {
    local deadline
    deadline=$(($(now_cs) + $1 * 100))
    shift
    while ! "$@" >/dev/null 2>&1; do
        [ "$(now_cs)" -ge "$deadline" ] && return 1
        sleep 0.05
    done
}

# Our guest's split of its last balloon step (data/balloon/step/, published with the
# settle): reports PREFIX_guest_{total,hypercall,outside,model,scrub,cpu,outside_cpu}_ms,
# _outside_permille, _outside_cpu_permille (time on the CPU outside the hypercalls, per
# thousand of the step's wall time: steal excluded) and
# _hypercalls. Fails if the step it describes is not the one to TARGET_MIB.
guest_step_split() {
    local prefix=$1 mib=$2 tk total hyper out model scrub cpu ocpu opm pm calls
    tk=$(data_read balloon/step/target-kib) || fail "$prefix: no data/balloon/step/ from the guest"
    [ "$tk" = $((mib * 1024)) ] || fail "$prefix: data/balloon/step/ describes a step to $tk KiB, not $((mib * 1024))"
    total=$(data_read balloon/step/total-us)
    hyper=$(data_read balloon/step/hypercall-us)
    out=$(data_read balloon/step/outside-us)
    model=$(data_read balloon/step/model-us) || fail "$prefix: no data/balloon/step/model-us from the guest"
    scrub=$(data_read balloon/step/scrub-us) || fail "$prefix: no data/balloon/step/scrub-us from the guest"
    cpu=$(data_read balloon/step/cpu-us) || fail "$prefix: no data/balloon/step/cpu-us from the guest"
    ocpu=$(data_read balloon/step/outside-cpu-us) || fail "$prefix: no data/balloon/step/outside-cpu-us from the guest"
    opm=$(data_read balloon/step/outside-cpu-permille) || fail "$prefix: no data/balloon/step/outside-cpu-permille from the guest"
    pm=$(data_read balloon/step/outside-permille)
    calls=$(data_read balloon/step/hypercalls)
    info "${prefix}_guest_total_ms=$(awk -v x="$total" 'BEGIN { printf "%.1f", x / 1000 }') ${prefix}_guest_hypercall_ms=$(awk -v x="$hyper" 'BEGIN { printf "%.1f", x / 1000 }') ${prefix}_guest_outside_ms=$(awk -v x="$out" 'BEGIN { printf "%.1f", x / 1000 }') ${prefix}_guest_model_ms=$(awk -v x="$model" 'BEGIN { printf "%.1f", x / 1000 }') ${prefix}_guest_scrub_ms=$(awk -v x="$scrub" 'BEGIN { printf "%.1f", x / 1000 }') ${prefix}_guest_outside_permille=$pm ${prefix}_guest_cpu_ms=$(awk -v x="$cpu" 'BEGIN { printf "%.1f", x / 1000 }') ${prefix}_guest_outside_cpu_ms=$(awk -v x="$ocpu" 'BEGIN { printf "%.1f", x / 1000 }') ${prefix}_guest_outside_cpu_permille=$opm ${prefix}_guest_hypercalls=$calls"
}

# hotplug_add_split PREFIX: the guest's CPU time by phase of its last hot-add
# (data/hotplug/last-add/, see guest/src/xen/hotplug.rs AddTiming) if the step just timed
# hot-added (data/hotplug/adds moved past HOTPLUG_ADDS, which this updates), else
# PREFIX_hotadd=none.
hotplug_add_split() {
    local prefix=$1 got k v line=""
    got=$(data_read hotplug/adds) || fail "$prefix: no data/hotplug/adds from the guest"
    if [ "$got" = "${HOTPLUG_ADDS:-0}" ]; then
        info "${prefix}_hotadd=none"
        return
    fi
    HOTPLUG_ADDS=$got
    for k in sections refill-us build-us map-us adopt-us; do
        v=$(data_read "hotplug/last-add/$k") || fail "$prefix: no data/hotplug/last-add/$k from the guest"
        case $k in
            *-us) line="$line ${prefix}_hotadd_${k%-us}_ms=$(awk -v x="$v" 'BEGIN { printf "%.2f", x / 1000 }')" ;;
            *) line="$line ${prefix}_hotadd_$k=$v" ;;
        esac
    done
    info "${line# }"
}

# ---------------------------------------------------------------- vCPUs through Xen's eyes
# The vCPU ids Xen has online for the domain under test, space-separated ("0 1 3"), from
# `xl vcpu-list`: an offline vCPU shows `-` as its CPU and a state with `p`.
xen_online_vcpus() {
    xl vcpu-list "$DOMNAME" 2>/dev/null \
        | awk 'NR > 1 && $4 != "-" && $5 !~ /p/ { printf "%s%s", sep, $3; sep = " " }'
}

# wait_vcpus SECS "0 1 2": until Xen shows exactly those vCPUs online.
wait_vcpus() {
    local secs=$1 want=$2
    ONLINE_VCPUS=
    vcpus_are() { ONLINE_VCPUS=$(xen_online_vcpus); [ "$ONLINE_VCPUS" = "$want" ]; }
    wait_every 1 "$secs" "vCPUs $want online (xl vcpu-list)" vcpus_are \
        || fail "xl vcpu-list shows vCPUs '$(xen_online_vcpus)' online after ${secs}s, want '$want'"
}

# Total CPU seconds Xen has charged to the domain's vCPUs (xl vcpu-list Time(s) summed).
vcpu_cpu_secs() {
    xl vcpu-list "$DOMNAME" 2>/dev/null | awk 'NR > 1 { t += $6 } END { printf "%.1f", t }'
}
