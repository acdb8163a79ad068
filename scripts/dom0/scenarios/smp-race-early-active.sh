# xenci-scenario: smp-race-early-active
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 420
# xenci-about: negative control: race-bug=early-active (active bit set before the descriptors are initialised) must be detected by the smp-race walkers within the walk
scenario_smp_race_early_active() {
    race_walk "xenci-race-active" "race race-bug=early-active" expect-detected
}
