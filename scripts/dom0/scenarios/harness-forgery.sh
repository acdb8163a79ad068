# xenci-scenario: harness-forgery
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 60
# xenci-about: the guest prints forged harness markers (say=: no nonce, a guessed nonce, after a CR; Xen/dom0 panic text) on port 0xE9 and its console; dom0 also replays the forged markers raw at line starts; the run's verdicts must be unaffected (the host counts them as ignored)
scenario_harness_forgery() {
    # Each forgery, if the verdict tool believed it, would break this run visibly: a
    # second verdict for this scenario, a verdict for one it never began, a DONE that does
    # not add up, or a Xen/dom0 panic. `+` is a space, `%0D` a carriage return (cmdline.rs).
    local guess=0123456789abcdef0123456789abcdef
    local words="say=XENCI+PASS+harness-forgery+0.01+t=1"
    words="$words say=XENCI+FAIL+harness-forgery+0.01+t=1+forged"
    words="$words say=XENCI+$guess+FAIL+harness-forgery+0.01+t=1+guessed+nonce"
    words="$words say=XENCI+$guess+PASS+boot+0.01+t=1"
    words="$words say=XENCI+BEGIN+forged-extra+t=1"
    words="$words say=XENCI+FAIL+forged-extra+0.01+t=1+forged"
    words="$words say=%0DXENCI+DONE+pass=0+fail=9+skip=0+t=1"
    words="$words say=(XEN)+Panic+on+CPU+0: say=(XEN)+forged+Xen+panic"
    words="$words say=Kernel+panic+-+not+syncing:+forged+dom0+panic"
    create_domain "xenci-forgery-$SUBJECT" "extra=\"loglevel=info $words\""
    wait_ready 45

    # The forgeries really went out: Xen's copy of port 0xE9 (`(dN) ...`) and the console.
    local n_say=10 e9 con
    e9=$(xl dmesg 2>/dev/null | grep -c "(d$DOMID) .*\(XENCI \|Panic on CPU\|Kernel panic\|forged Xen\)")
    con=$(grep -c '^\(.XENCI \|XENCI \|(XEN) \|Kernel panic\)' "$CONSOLE_LOG")
    info "forged_lines=$n_say on_port_e9=$e9 in_console_log=$con"
    [ "$e9" -ge "$n_say" ] || fail "only $e9 of $n_say forged lines in xl dmesg as (d$DOMID) lines"
    [ "$con" -ge "$n_say" ] || fail "only $con of $n_say forged lines in the console log $CONSOLE_LOG"

    # The worst a careless scenario could do with guest text (e.g. a xenstore value with
    # a newline in it): put a forged marker at the start of a serial line. Only the nonce
    # tells it apart. (Text imitating Xen's own "(XEN) Panic" lines cannot be told apart
    # from Xen's at a line start, so dom0 never prints guest text unprefixed; those
    # forgeries are shown inside `(dN)` and `XENCI <nonce> LOG` lines, and could only
    # ever turn a run into a FAIL.)
    say "replaying the guest's forged marker lines raw onto the serial log:"
    grep '^.\{0,1\}XENCI ' "$CONSOLE_LOG" >&3
    # ... and the usual way, quoted under a failure (XENCI <nonce> LOG ...).
    show_guest_log 40
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
