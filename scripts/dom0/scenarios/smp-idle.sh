# xenci-scenario: smp-idle
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 90
# xenci-about: vcpus=4 idle for 10 s: Xen charges all four vCPUs together less than 2 % of wall time (no busy-waiting anywhere)
scenario_smp_idle() {
    create_domain "xenci-smp-idle" 'vcpus=4' 'maxvcpus=4'
    wait_ready 60
    wait_vcpus 30 "0 1 2 3"
    # Let boot-time work finish, then measure.
    sleep 2
    c0=$(vcpu_cpu_secs) t0=$(now_cs)
    sleep 10
    c1=$(vcpu_cpu_secs) t1=$(now_cs)
    check_alive
    per_mille=$(awk -v a="$c0" -v b="$c1" -v cs=$((t1 - t0)) 'BEGIN { printf "%d", (b - a) * 100000 / cs }')
    info "idle_cpu_secs=$c0->$c1 wall_secs=$(fmt_cs $((t1 - t0))) idle_cpu_per_mille=$per_mille"
    xl vcpu-list "$DOMNAME" | sed 's/^/  /' >>"$WORK/tools.log"
    [ "$per_mille" -lt 20 ] \
        || fail "idle with 4 vCPUs, Xen charged $c0 -> $c1 CPU seconds over $(fmt_cs $((t1 - t0))) s ($per_mille per mille >= 20): something busy-waits"
    wait_vcpus 5 "0 1 2 3"
    tool xl destroy "$DOMNAME" || fail "xl destroy failed"
}
