# xenci-scenario: smp-race-no-grace
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 420
# xenci-about: negative control: race-bug=no-grace (memmap freed without waiting for a grace period) must be detected by the smp-race walkers within the walk
scenario_smp_race_no_grace() {
    race_walk "xenci-race-grace" "race race-bug=no-grace" expect-detected
}
