# xenci-scenario: smp-boot
# xenci-ci: yes
# xenci-peer: yes
# xenci-budget: 240
# xenci-about: vcpus=1, 2, 4 and vcpus=2/maxvcpus=4: xl vcpu-list shows exactly the enabled vCPUs online; census = Xen (ours); xl shutdown is clean; xl create -> ready per config (@linux: the Linux peer, same checks but the census)
scenario_smp_boot() {
    local spec n max want i
    for spec in 1:1 2:2 4:4 2:4; do
        n=${spec%:*} max=${spec#*:}
        create_domain "xenci-smp-$n-$max" "vcpus=$n" "maxvcpus=$max"
        wait_ready 90
        info "smp_${n}_${max}_ready_secs=$(fmt_cs $(($(now_cs) - CREATE_CS)))"
        want=0 i=1
        while [ "$i" -lt "$n" ]; do want="$want $i"; i=$((i + 1)); done
        wait_vcpus 30 "$want"
        total=$(xl vcpu-list "$DOMNAME" | awk 'NR > 1' | wc -l)
        [ "$total" = "$max" ] || fail "xl vcpu-list lists $total vCPUs, want maxvcpus=$max"
        if [ "$SUBJECT" = guest ]; then
            check_census 10 "smp_${n}_${max}"
            [ "$(data_read smp/online)" = "$n" ] || fail "vcpus=$n: the guest's data/smp/online is $(data_read smp/online)"
            info "smp_${n}_${max}_online=\"$ONLINE_VCPUS\" listed=$total guest_online=$(data_read smp/online) guest_max=$(data_read smp/max)"
        else
            info "smp_${n}_${max}_online=\"$ONLINE_VCPUS\" listed=$total"
        fi
        tool xl shutdown "$DOMNAME" || fail "xl shutdown $DOMNAME failed"
        wait_for 30 "$DOMNAME to disappear" domain_gone "$DOMNAME" \
            || { check_not_crashed; fail "vcpus=$n: domain still exists 30s after xl shutdown"; }
        wait_for 10 "xl to log the shutdown reason" reason_logged \
            || fail "xl -F logged no shutdown reason"
        [ "$(shutdown_reason)" = 0 ] || fail "vcpus=$n: shutdown reason $(reason_name "$(shutdown_reason)"), want poweroff"
        if panic_line >/dev/null; then fail "vcpus=$n: $(panic_line)"; fi
    done
}
