# xenci-scenario: bench-boot
# xenci-ci: no
# xenci-peer: yes
# xenci-budget: 240
# xenci-about: benchmark: xl create -> first output and -> ready; ours beside the do-nothing PVH kernel (floor) on Xen's console stamps, beside Linux on the polled console log; XENCI_BENCH_BOOTS runs (default 5; Linux 1), medians
# Seconds dom0 stays idle after `xl create` for ours and the do-nothing kernel: the
# measures are Xen's console stamps and the guest's own clock, so nothing needs polling
# while they boot (xl create -> ready is ~0.8 s; a later ready is still waited for).
BENCH_QUIET=${XENCI_BENCH_QUIET:-2}

scenario_bench_boot() {
    local runs=${XENCI_BENCH_BOOTS:-5} i=1
    # Linux takes ~10 s a boot under TCG: once.
    [ "$SUBJECT" = linux ] && runs=1
    while [ "$i" -le "$runs" ]; do
        [ "$SUBJECT" = guest ] && bench_boot_nothing "$i"
        bench_boot_subject "$i"
        i=$((i + 1))
    done
    i=1
    while [ "$SUBJECT" = guest ] && [ "$i" -le "$runs" ]; do
        bench_boot_paused "$i"
        i=$((i + 1))
    done
}

# Ours created paused (`xl create -p`) and unpaused once xl waits idle for the domain's
# death: the same boot without the toolstack's post-create work (xl's own set-up after
# the unpause, xenconsoled attaching) competing with it for the one emulated CPU. What
# the guest's clock shows then is its own work and xenstored's replies.
bench_boot_paused() {
    CREATE_PAUSED=1
    bench_create "xenci-bb-paused-$1"
    CREATE_PAUSED=
    case $(domain_state "$DOMNAME") in
        *p*) ;;
        *) fail "xl create -p left $DOMNAME in state '$(domain_state "$DOMNAME")', not paused" ;;
    esac
    # xl has printed "Waiting for domain ... to die" (created_domid); xenconsoled and
    # xenstored get 1 s to finish with the new domain too. The unpause runs in the
    # background so that this shell is already asleep when the guest starts: only
    # `xl unpause` exiting runs in dom0 then.
    (sleep 1 && exec xl unpause "$DOMNAME") >>"$WORK/tools.log" 2>&1 &
    sleep $((1 + BENCH_QUIET))
    wait $! || fail "xl unpause $DOMNAME failed"
    wait_ready 90
    guest_boot_line paused_ "$1"
    bench_destroy
}

# guest_boot_line PREFIX RUN: the guest's boot line (kernel/boottime.rs) as
# PREFIXguest_tsc_boot_ms=, PREFIXboot_phases_ms=, PREFIXboot_cpu_ms= and vCPU 0's
# runstate at ready (PREFIXguest_{running,runnable,blocked}_ms=).
guest_boot_line() {
    local p=$1 line tsc cpu rs
    wait_for 10 "the guest's boot phases line" grep -q 'boot: first instruction -> ready' "$CONSOLE_LOG" \
        || fail "no 'boot: first instruction -> ready' line from the guest within 10s of ready"
    line=$(grep -m1 'boot: first instruction -> ready' "$CONSOLE_LOG")
    # "boot: first instruction -> ready 41.3 ms (early 2.1, ...); on a CPU (to xen 5.0,
    # ...); vCPU 0 by Xen's account: running ..."
    tsc=$(echo "$line" | sed -n 's/.*-> ready \([0-9.]*\) ms (\([^)]*\)).*/\1 \2/p')
    [ -n "$tsc" ] || fail "no 'boot: first instruction -> ready' line from the guest"
    cpu=$(echo "$line" | sed -n 's/.*; on a CPU (\([^)]*\)).*/\1/p')
    rs=$(echo "$line" | sed -n "s/.*running \([0-9.]*\) ms, waiting for a CPU \([0-9.]*\) ms, blocked \([0-9.]*\) ms.*/${p}guest_running_ms=\1 ${p}guest_runnable_ms=\2 ${p}guest_blocked_ms=\3/p")
    info "${p}guest_tsc_boot_ms=${tsc%% *} ${p}boot_phases_ms=$(echo "${tsc#* }" | tr -d ' ') ${p}boot_cpu_ms=$(echo "$cpu" | tr -d ' ') $rs run=$2"
}

# The floor: the do-nothing PVH kernel (xenci nothing-kernel) prints one line on port
# 0xE9 and idles. xl create -> that line, on Xen's stamps.
bench_boot_nothing() {
    local a t
    CREATE_QUIET=$BENCH_QUIET
    bench_create "xenci-bb-nothing-$1" 'kernel="target/release/nothing"'
    CREATE_QUIET=
    wait_every 0.5 30 "the do-nothing kernel's line" e9_stamp 'nothing: up' \
        || fail "no 'nothing: up' from the do-nothing kernel (d$DOMID) on port 0xE9 within 30s"
    a=$(bench_anchor)
    [ -n "$a" ] || fail "no Xen line after xl debug-keys t (the boot measures' start)"
    t=$(e9_stamp 'nothing: up')
    info "nothing_first_output_secs=$(secs_between "$a" "$t") run=$1"
    case $(domain_state "$DOMNAME") in
        *c* | '') fail "the do-nothing kernel did not stay up (state '$(domain_state "$DOMNAME")')" ;;
    esac
    bench_destroy
}

# Ours or Linux: xl create -> first console byte and -> ready (dom0 polls the console log);
# ours also on Xen's stamps of its port-0xE9 lines.
bench_boot_subject() {
    local a f r first own
    [ "$SUBJECT" = guest ] && CREATE_QUIET=$BENCH_QUIET
    bench_create "xenci-bb-$SUBJECT-$1"
    CREATE_QUIET=
    if [ "$SUBJECT" = linux ]; then
        # Linux prints nothing on port 0xE9: its first output is the console log's first
        # byte, polled every 0.05 s. Not done for ours: that polling from dom0 competes
        # with a ~0.1 s boot for the one emulated CPU (Xen's stamps measure ours instead).
        wait_fast 60 test -s "$CONSOLE_LOG" || fail "console log $CONSOLE_LOG stays empty"
        info "console_first_secs=$(fmt_cs $(($(now_cs) - CREATE_CS))) run=$1"
    fi
    if [ "$SUBJECT" = guest ]; then
        # While ours boots (~0.05 s), dom0 only greps the console log: wait_ready's crash
        # checks run `xl list` / `xl domid`, ~0.1 s of the one emulated CPU each, which the
        # booting guest would wait for. wait_ready below still judges (and times out).
        wait_every 0.1 10 "the ready line (console log only)" ready_seen \
            || say "no ready line within 10s; wait_ready decides"
    fi
    wait_ready 90
    if [ "$SUBJECT" = guest ]; then
        a=$(bench_anchor)
        [ -n "$a" ] || fail "no Xen line after xl debug-keys t (the boot measures' start)"
        f=$(e9_stamp)
        r=$(e9_stamp "ready domid=$DOMID")
        # The guest's own clock (Xen system time once its Xen setup ran; 0 before): its
        # first stamped line -> its ready line.
        first=$(sed -n 's/^\[ *\([0-9]*\.[0-9]*\)\].*/\1/p' "$CONSOLE_LOG" | awk '$1 + 0 > 0 { print; exit }')
        own=$(grep -m1 "ready domid=$DOMID" "$CONSOLE_LOG" | sed -n 's/^\[ *\([0-9]*\.[0-9]*\)\].*/\1/p')
        info "first_output_secs=$(secs_between "$a" "$f") ready_xen_secs=$(secs_between "$a" "$r") first_to_ready_secs=$(secs_between "$f" "$r") guest_clock_boot_secs=$(secs_between "$first" "$own") run=$1"
        guest_boot_line "" "$1"
    fi
    bench_destroy
}

# Destroy the domain and wait until Xen has let it go, then stay idle for a second (Xen
# cleans up a dead domain and scrubs its memory partly in idle time; back-to-back boots
# were seen 0.3-0.6 s slower at random). Every kernel gets the same pause: not a wait
# for a condition, but the same quiet start for each measurement.
bench_destroy() {
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
    wait_for 10 "$DOMNAME gone" domain_gone "$DOMNAME" || fail "$DOMNAME still listed 10s after xl destroy"
    sleep 1
}
