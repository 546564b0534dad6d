use super::*;
use std::net::SocketAddr;

const BR: &str = "br-0123456789ab";

fn input<'a>(egress: &'a Egress, allow: &'a [Endpoint], locals: &'a [IpAddr]) -> PlanInput<'a> {
    PlanInput {
        runner_id: "abcdef123456",
        job_id: 4242,
        bridge_iface: BR,
        subnet: "10.213.0.16/28".parse().unwrap(),
        address_pool: "10.213.0.0/16".parse().unwrap(),
        allow,
        local_addrs: locals,
        egress,
        block_private: false,
        forward_hook_v4: "DOCKER-USER",
        forward_hook_v6: "FORWARD",
        docker_isolation_v4: false,
        docker_isolation_v6: false,
    }
}

fn locals() -> Vec<IpAddr> {
    [
        "127.0.0.1",
        "192.0.2.2",
        "10.213.0.17",
        "169.254.1.1",
        "::1",
        "fd00::2",
        "fe80::1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

/// The rule's match words and verdict, without `-A <chain>` and the comment.
fn shape(args: &[String]) -> String {
    let mut out = Vec::new();
    let mut skip = 0;
    for (i, a) in args.iter().enumerate() {
        if i < 2 {
            continue;
        }
        if skip > 0 {
            skip -= 1;
            continue;
        }
        if a == "-m" && args.get(i + 1).map(String::as_str) == Some("comment") {
            skip = 3;
            continue;
        }
        out.push(a.as_str());
    }
    out.join(" ")
}

fn shapes(plan: &FamilyPlan) -> Vec<String> {
    plan.rules.iter().map(|r| shape(r)).collect()
}

fn position(shapes: &[String], wanted: &str) -> usize {
    shapes
        .iter()
        .position(|s| s == wanted)
        .unwrap_or_else(|| panic!("no rule {wanted:?} in {shapes:#?}"))
}

#[test]
fn v4_order_with_allow() {
    let egress = Egress::Allow;
    let allow = [Endpoint::tcp("192.0.2.2:8443".parse().unwrap())];
    let locals = locals();
    let plan = plan_install(&input(&egress, &allow, &locals)).unwrap();
    assert_eq!(
        shapes(&plan.v4),
        vec![
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-o br-0123456789ab -j ACCEPT",
            "-d 169.254.0.0/16 -j DROP",
            "-d 192.0.2.2/32 -p tcp --dport 8443 -j ACCEPT",
            "-d 168.63.129.16/32 -j DROP",
            "-d 100.100.100.200/32 -j DROP",
            "-d 10.213.0.17/32 -j DROP",
            "-d 127.0.0.1/32 -j DROP",
            "-d 192.0.2.2/32 -j DROP",
            "-m addrtype --dst-type LOCAL -j DROP",
            "-m addrtype --dst-type BROADCAST -j DROP",
            "-m addrtype --dst-type MULTICAST -j DROP",
            "-d 10.213.0.0/16 -j DROP",
            "-j RETURN",
        ]
    );
}

#[test]
fn v6_rules_drop_metadata_link_local_and_host() {
    let egress = Egress::Allow;
    let allow = [Endpoint::tcp("[fd00::2]:443".parse().unwrap())];
    let locals = locals();
    let plan = plan_install(&input(&egress, &allow, &locals)).unwrap();
    assert_eq!(
        shapes(&plan.v6),
        vec![
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-o br-0123456789ab -j ACCEPT",
            "-d fd00:ec2::254/128 -j DROP",
            "-d fe80::/10 -j DROP",
            "-d fd00::2/128 -p tcp --dport 443 -j ACCEPT",
            "-d fd20:ce::254/128 -j DROP",
            "-d ::1/128 -j DROP",
            "-d fd00::2/128 -j DROP",
            "-m addrtype --dst-type LOCAL -j DROP",
            "-m addrtype --dst-type MULTICAST -j DROP",
            "-j RETURN",
        ]
    );
    // v6 jumps from FORWARD (Docker does not manage ip6tables here) and INPUT.
    assert_eq!(plan.v6.jumps[0][..3], ["-I", "FORWARD", "1"]);
    assert_eq!(plan.v6.jumps[1][..3], ["-I", "INPUT", "1"]);
}

/// M5: with `block_private`, the private ranges are dropped after the allowed endpoints
/// (GitLab, mirror, resolvers on a LAN stay open) and the pool, before the egress verdict;
/// an allow-list entry inside a private range opens that part, one outside does not.
#[test]
fn private_ranges_closed_on_request_and_reopened_only_by_list_entries() {
    let allow = [Endpoint::udp("10.1.2.3:53".parse().unwrap())];
    let locals = locals();
    let egress = Egress::Allow;
    let mut inp = input(&egress, &allow, &locals);
    let open = shapes(&plan_install(&inp).unwrap().v4);
    assert!(
        !open.iter().any(|s| s == "-d 10.0.0.0/8 -j DROP"),
        "{open:#?}"
    );
    inp.block_private = true;
    let v4 = shapes(&plan_install(&inp).unwrap().v4);
    let accept = position(&v4, "-d 10.1.2.3/32 -p udp --dport 53 -j ACCEPT");
    let pool = position(&v4, "-d 10.213.0.0/16 -j DROP");
    for range in PRIVATE_V4 {
        let at = position(&v4, &format!("-d {range} -j DROP"));
        assert!(accept < at && pool < at, "{v4:#?}");
    }
    assert_eq!(v4.last().map(String::as_str), Some("-j RETURN"));
    let v6 = shapes(&plan_install(&inp).unwrap().v6);
    position(&v6, "-d fc00::/7 -j DROP");

    let egress = Egress::AllowList(vec![
        "192.168.7.0/24".parse().unwrap(),
        "0.0.0.0/0".parse().unwrap(),
    ]);
    let mut inp = input(&egress, &allow, &locals);
    inp.block_private = true;
    let v4 = shapes(&plan_install(&inp).unwrap().v4);
    let reopened = position(&v4, "-d 192.168.7.0/24 -j RETURN");
    let closed = position(&v4, "-d 192.168.0.0/16 -j DROP");
    assert!(reopened < closed, "{v4:#?}");
    // The catch-all list entry is not inside a private range: it comes after the drops.
    let all = position(&v4, "-d 0.0.0.0/0 -j RETURN");
    assert!(all > closed, "{v4:#?}");
}

#[test]
fn metadata_dropped_before_any_accept_whatever_the_egress() {
    let cidrs = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    // An allow endpoint on the metadata address itself must not open it.
    let allow = [
        Endpoint::tcp("169.254.169.254:80".parse().unwrap()),
        Endpoint::tcp("[fd00:ec2::254]:80".parse().unwrap()),
    ];
    let locals = locals();
    for egress in [Egress::Allow, Egress::Deny, Egress::AllowList(cidrs)] {
        let plan = plan_install(&input(&egress, &allow, &locals)).unwrap();
        for (family, meta) in [(&plan.v4, METADATA_V4), (&plan.v6, METADATA_V6)] {
            let s = shapes(family);
            let drop = position(&s, &format!("-d {meta} -j DROP"));
            // Only the conntrack and intra-bridge accepts may come before it.
            assert_eq!(drop, 2, "{egress:?}: {s:#?}");
            assert!(s[drop + 1..].iter().any(|r| r.ends_with("ACCEPT")));
        }
    }
}

#[test]
fn own_subnet_accepted_before_pool_drop() {
    let egress = Egress::Deny;
    let locals = locals();
    let plan = plan_install(&input(&egress, &[], &locals)).unwrap();
    let s = shapes(&plan.v4);
    let intra = position(&s, &format!("-o {BR} -j ACCEPT"));
    let pool = position(&s, "-d 10.213.0.0/16 -j DROP");
    let gateway = position(&s, "-d 10.213.0.17/32 -j DROP");
    assert!(intra < pool);
    // The gateway is inside the job's subnet but is the host: dropped before the pool
    // rule, and the intra-bridge accept cannot match it (it needs an output interface).
    assert!(gateway < pool);
}

#[test]
fn egress_variants_end_the_chain() {
    let locals = locals();
    let deny = plan_install(&input(&Egress::Deny, &[], &locals)).unwrap();
    assert_eq!(shapes(&deny.v4).last().unwrap(), "-j DROP");
    assert_eq!(shapes(&deny.v6).last().unwrap(), "-j DROP");

    let list = Egress::AllowList(vec![
        "198.51.100.0/24".parse().unwrap(),
        "203.0.113.7/32".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ]);
    let plan = plan_install(&input(&list, &[], &locals)).unwrap();
    let s4 = shapes(&plan.v4);
    assert_eq!(
        s4[s4.len() - 3..],
        [
            "-d 198.51.100.0/24 -j RETURN",
            "-d 203.0.113.7/32 -j RETURN",
            "-j DROP"
        ]
    );
    let s6 = shapes(&plan.v6);
    assert_eq!(
        s6[s6.len() - 2..],
        ["-d 2001:db8::/32 -j RETURN", "-j DROP"]
    );
    // Host and pool drops precede the allow list, so listing the host does not open it.
    let host = position(&s4, "-m addrtype --dst-type LOCAL -j DROP");
    let first_list = position(&s4, "-d 198.51.100.0/24 -j RETURN");
    assert!(host < first_list);
}

#[test]
fn every_rule_and_jump_carries_the_comment() {
    let locals = locals();
    let plan = plan_install(&input(&Egress::Allow, &[], &locals)).unwrap();
    assert_eq!(plan.comment, "isolated-runner runner=abcdef123456 job=4242");
    for fam in [&plan.v4, &plan.v6] {
        for args in fam.rules.iter().chain(fam.jumps.iter()) {
            let joined = args.join("\u{1}");
            assert!(
                joined.contains("--comment\u{1}isolated-runner runner=abcdef123456 job=4242"),
                "{args:?}"
            );
        }
        assert_eq!(fam.create, ["-N", "IR-abcdef12-4242"]);
    }
}

#[test]
fn jumps_come_from_the_bridge_into_the_chain() {
    let locals = locals();
    let plan = plan_install(&input(&Egress::Allow, &[], &locals)).unwrap();
    // FORWARD as well as DOCKER-USER: Docker re-inserts its own jump into DOCKER-USER on every
    // network it creates, and the gap in between must not open the bridge.
    let hooks = ["DOCKER-USER", "FORWARD", "INPUT"];
    assert_eq!(plan.v4.jumps.len(), hooks.len(), "{:?}", plan.v4.jumps);
    for (jump, hook) in plan.v4.jumps.iter().zip(hooks) {
        assert_eq!(jump[..5], ["-I", hook, "1", "-i", BR]);
        assert_eq!(jump[jump.len() - 2..], ["-j", "IR-abcdef12-4242"]);
    }
    // A family Docker does not manage has FORWARD as its hook: no second FORWARD jump.
    let hooks: Vec<&str> = plan.v6.jumps.iter().map(|j| j[1].as_str()).collect();
    assert_eq!(hooks, ["FORWARD", "INPUT"]);
}

#[test]
fn chain_names_fit() {
    assert_eq!(chain_name("abcdef123456", 1).unwrap(), "IR-abcdef12-1");
    assert_eq!(chain_name("ab", 77).unwrap(), "IR-ab-77");
    let longest_decimal = chain_name("abcdefgh", 9_999_999_999_999_999).unwrap();
    assert_eq!(longest_decimal, "IR-abcdefgh-9999999999999999");
    assert_eq!(longest_decimal.len(), MAX_CHAIN_LEN);
    let huge = chain_name("abcdefgh", u64::MAX).unwrap();
    assert_eq!(huge, "IR-abcdefgxffffffffffffffff");
    assert!(huge.len() <= MAX_CHAIN_LEN);
    for id in [0, 10u64.pow(16), 10u64.pow(17) + 3, u64::MAX - 1] {
        assert!(chain_name("zzzzzzzzzzzz", id).unwrap().len() <= MAX_CHAIN_LEN);
    }
}

#[test]
fn bad_ids_and_interfaces_are_refused() {
    for bad in ["", "a b", "a\"b", &"a".repeat(65), "a+"] {
        assert!(chain_name(bad, 1).is_err(), "{bad:?}");
    }
    let egress = Egress::Allow;
    for bad in ["", "br+", "-i", "br 0", "averyveryverylongname0"] {
        let mut inp = input(&egress, &[], &[]);
        inp.bridge_iface = bad;
        assert!(plan_install(&inp).is_err(), "{bad:?}");
    }
}

#[test]
fn comments_round_trip() {
    let c = comment("abc-1_2", 99);
    assert_eq!(parse_comment(&c), Some(("abc-1_2".to_string(), 99)));
    assert_eq!(parse_comment("something else"), None);
    assert_eq!(parse_comment("isolated-runner runner=a job=x"), None);
    assert_eq!(parse_comment("isolated-runner runner=a job=1 extra"), None);
}

#[test]
fn listing_is_parsed_back() {
    let text = r#"-P INPUT ACCEPT
-N DOCKER-USER
-N IR-abcdef12-4242
-N IR-orphan00-7
-A INPUT -i br-0123456789ab -m comment --comment "isolated-runner runner=abcdef123456 job=4242" -j IR-abcdef12-4242
-A INPUT -i eth0 -j ACCEPT
-A DOCKER-USER -i br-0123456789ab -m comment --comment "isolated-runner runner=abcdef123456 job=4242" -j IR-abcdef12-4242
-A DOCKER-USER -j RETURN
-A IR-abcdef12-4242 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "isolated-runner runner=abcdef123456 job=4242" -j ACCEPT
"#;
    let (chains, jumps) = parse_listing(text);
    assert_eq!(
        chains,
        vec![
            (
                "IR-abcdef12-4242".to_string(),
                Some(("abcdef123456".to_string(), 4242))
            ),
            ("IR-orphan00-7".to_string(), None),
        ]
    );
    assert_eq!(jumps.len(), 2);
    assert_eq!(jumps[0].hook, "INPUT");
    assert_eq!(jumps[1].hook, "DOCKER-USER");
    assert_eq!(
        jumps[0].spec,
        [
            "-i",
            "br-0123456789ab",
            "-m",
            "comment",
            "--comment",
            "isolated-runner runner=abcdef123456 job=4242",
            "-j",
            "IR-abcdef12-4242"
        ]
    );
}

#[test]
fn endpoint_family_filtering() {
    let allow = [
        Endpoint::tcp(SocketAddr::from(([192, 0, 2, 9], 443))),
        Endpoint::udp("[2001:db8::53]:53".parse().unwrap()),
    ];
    let locals = locals();
    let plan = plan_install(&input(&Egress::Deny, &allow, &locals)).unwrap();
    let s4 = shapes(&plan.v4);
    let s6 = shapes(&plan.v6);
    assert!(s4.contains(&"-d 192.0.2.9/32 -p tcp --dport 443 -j ACCEPT".to_string()));
    assert!(!s4.iter().any(|s| s.contains("2001:db8")));
    assert!(s6.contains(&"-d 2001:db8::53/128 -p udp --dport 53 -j ACCEPT".to_string()));
    assert!(!s6.iter().any(|s| s.contains("192.0.2.9")));
}

/// A plan becomes one restore transaction whose lines read back (with the listing parser,
/// which splits words as iptables does) as exactly the plan's commands.
#[test]
fn plans_render_as_one_restore_transaction() {
    let egress = Egress::Deny;
    let allow = [Endpoint::tcp("192.0.2.10:443".parse().unwrap())];
    let locals = ["127.0.0.1".parse().unwrap()];
    let plan = plan_install(&input(&egress, &allow, &locals)).unwrap();
    let fp = plan.family(Family::V4);
    let commands: Vec<&Vec<String>> = std::iter::once(&fp.create)
        .chain(&fp.rules)
        .chain(&fp.jumps)
        .collect();
    let text = restore_input(commands.iter().copied()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"*filter"));
    assert_eq!(lines.last(), Some(&"COMMIT"));
    let body = &lines[1..lines.len() - 1];
    assert_eq!(body.len(), commands.len());
    for (line, args) in body.iter().zip(&commands) {
        assert_eq!(&split_rule_line(line), *args, "{line}");
    }
    assert!(
        body.iter()
            .any(|l| l.contains("--comment \"isolated-runner runner=abcdef123456 job=4242\"")),
        "{text}"
    );
}

/// Words iptables-restore could read differently are refused, never passed on mangled.
#[test]
fn restore_refuses_words_it_cannot_quote() {
    for bad in ["", "a\"b", "it's", "back\\slash", "two\nlines", "tab\there"] {
        let cmd = vec!["-A".to_string(), "X".to_string(), bad.to_string()];
        assert_eq!(restore_input([&cmd]), None, "{bad:?}");
    }
    let ok = vec!["-D".to_string(), "INPUT".to_string(), "a b".to_string()];
    assert_eq!(
        restore_input([&ok]).as_deref(),
        Some("*filter\n-D INPUT \"a b\"\nCOMMIT\n")
    );
}

/// Docker's isolation chain, where the family has one, runs from the job's chain right after
/// the pool's drop: before the private ranges' and the egress list's returns (an entry that
/// names another Docker network's range must not skip it), whatever Docker does to its own
/// FORWARD jump into it.
#[test]
fn docker_isolation_runs_from_the_chain_before_any_return() {
    let locals = locals();
    let egress = Egress::AllowList(vec!["10.216.0.0/28".parse().unwrap()]);
    let mut inp = input(&egress, &[], &locals);
    inp.docker_isolation_v4 = true;
    inp.block_private = true;
    let plan = plan_install(&inp).unwrap();
    let v4: Vec<String> = plan.v4.rules.iter().map(|r| shape(r)).collect();
    let at = |needle: &str| {
        v4.iter()
            .position(|r| r == needle)
            .unwrap_or_else(|| panic!("{needle} missing: {v4:#?}"))
    };
    let isolation = at("-j DOCKER-ISOLATION-STAGE-1");
    assert_eq!(isolation, at("-d 10.213.0.0/16 -j DROP") + 1, "{v4:#?}");
    let first_return = v4.iter().position(|r| r.ends_with("-j RETURN")).unwrap();
    assert!(isolation < first_return, "{v4:#?}");
    assert_eq!(
        v4.iter().filter(|r| r.contains("DOCKER-ISOLATION")).count(),
        1
    );
    // A family without Docker's isolation chain does not name it.
    assert!(
        plan.v6
            .rules
            .iter()
            .all(|r| !r.iter().any(|w| w.contains("DOCKER-ISOLATION"))),
        "{:?}",
        plan.v6.rules
    );
}
