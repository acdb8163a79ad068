# xenci-scenario: linux-boot
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 90
# xenci-about: the Linux peer (Debian Linux 6.1, PVH domU) boots; same checks as boot (= boot@linux)
scenario_linux_boot() {
    SUBJECT=linux
    scenario_boot
}
