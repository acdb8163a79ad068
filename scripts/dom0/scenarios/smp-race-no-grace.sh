# xenci-scenario: smp-race-no-grace
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 420
# xenci-about: negative control: race-bug=no-grace (memmap freed without waiting for a grace period) must be detected by the smp-race walkers within the walk, with the grant churn on (a device subsection removed every round, as hot-remove removes sections)
scenario_smp_race_no_grace() {
    RACE_GRANTS=yes race_walk "xenci-race-grace" "race race-bug=no-grace" expect-detected
}
