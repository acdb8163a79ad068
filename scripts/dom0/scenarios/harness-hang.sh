# xenci-scenario: harness-hang
# xenci-ci: no
# xenci-peer: no
# xenci-budget: 8
# xenci-about: self-check of the harness: a scenario that hangs must FAIL at its budget (expect FAIL)
scenario_harness_hang() {
    say "sleeping past the 8 s budget; the runner's watchdog must end this as FAIL"
    sleep 600
}
