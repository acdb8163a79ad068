# xenci-scenario: vcpu-set
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 240
# xenci-about: xl vcpu-set 4 -> 1 -> 3 -> 4 (-i): each reflected in xl vcpu-list; a mem-set followed between steps; vCPU 0 offline is refused
scenario_vcpu_set() {
    local step n want i mib
    create_domain "xenci-vcpu-set" 'vcpus=4' 'maxvcpus=4' 'memory=512' 'maxmem=512'
    wait_ready 60
    require_balloon
    wait_vcpus 30 "0 1 2 3"
    mib=384
    for n in 1 3 4 2 4; do
        t0=$(now_cs)
        tool xl vcpu-set -i "$DOMNAME" "$n" || fail "xl vcpu-set -i $DOMNAME $n failed: $(tail -n 1 "$WORK/tools.log")"
        want=0 i=1
        while [ "$i" -lt "$n" ]; do want="$want $i"; i=$((i + 1)); done
        wait_vcpus 30 "$want"
        info "vcpus_$n=\"$ONLINE_VCPUS\" secs=$(fmt_cs $(($(now_cs) - t0))) guest_online=$(data_read smp/online)"
        balloon_step "mem_after_$n" "$mib" 60
        mib=$((mib == 384 ? 256 : 384))
    done
    # vCPU 0 cannot go: the guest refuses it and says so; Xen still shows it online.
    xenstore-write "/local/domain/$DOMID/cpu/0/availability" offline \
        || fail "xenstore-write cpu/0/availability failed"
    wait_for 20 "the refusal in the log" console_has 'vCPU 0 cannot go offline' \
        || fail "no refusal logged for cpu/0/availability=offline"
    wait_vcpus 5 "0 1 2 3"
    xenstore-write "/local/domain/$DOMID/cpu/0/availability" online
    balloon_step mem_after_refusal 320 60
    tool xl destroy "$DOMNAME" || fail "xl destroy failed"
}
