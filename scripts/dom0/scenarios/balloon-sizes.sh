# xenci-scenario: balloon-sizes
# xenci-ci: no
# xenci-budget: 400
# xenci-about: benchmark (numbers; fails only on errors): balloon steps of 1 to 512 MiB from 1024 MiB and back, ours only: the guest's in/outside-hypercall split of each (a fixed cost per step weighs more as steps shrink); a first step of each kind before, reported apart (cold code under TCG)
# sizes_swing DOWN UP MIB: a step to MIB and one back to 1024, each judged and reported
# with the guest's split under the labels DOWN and UP.
sizes_swing() {
    balloon_step "$1" "$3" 120
    guest_step_split "$1" "$3"
    balloon_step "$2" 1024 120
    guest_step_split "$2" 1024
}

scenario_balloon_sizes() {
    # Each step is judged like any other (Xen's tot_pages at the target, the guest done
    # there, its census equal to Xen's); the numbers are the guest's own split of the step.
    # 1 MiB is 256 single pages (order-0 extents only); the rest are whole 2 MiB extents.
    create_domain "xenci-sizes" 'memory=1024' 'maxmem=1024'
    wait_ready 90
    require_balloon
    wait_reach 1024 30
    # The first step of each kind runs code this boot has not run: under TCG its
    # translation is charged to that step (measured: a first 1 MiB step spent 5.6 ms of CPU
    # outside the hypercall, the same step again 0.2 ms). One of each first, reported as
    # cold*, then the sweep.
    sizes_swing cold1023 coldu1023 1023
    sizes_swing cold1022 coldu1022 1022
    # Three rounds of the sweep: the table takes each step's median (a single short step
    # can catch Xen's own work, charged to whichever vCPU is running).
    local mib round
    for round in 1 2 3; do
        for mib in 1023 1022 1016 960 896 768 512; do
            sizes_swing "d$mib" "u$mib" "$mib"
        done
        say "balloon-sizes: round $round done"
    done
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
