//! Every check's ok and failing path, with synthetic facts.

use super::*;
use crate::config::Config;
use crate::docker::EngineFacts;
use crate::doctor::facts::{
    AclFact, AclProbe, ConfigFacts, DiskFact, GitlabFact, HostFacts, ImageFact, Leftovers, NetFact,
    NetpolicyFacts, Probe, RawRunner,
};
use crate::netpolicy::InstalledRule;
use crate::secret::Secret;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

fn healthy_config() -> Config {
    let mut c = Config {
        concurrent: 4,
        ..Config::default()
    };
    let r = crate::config::RunnerConfig {
        name: "r1".into(),
        token: Secret::new("glrt-x".to_string()),
        ..Default::default()
    };
    c.runners.push(r);
    c
}

pub(super) fn healthy() -> Facts {
    let now = SystemTime::now();
    Facts {
        config: ConfigFacts {
            state: ConfigState::Loaded {
                path: PathBuf::from("/etc/isolated-runner/config.toml"),
                config: Box::new(healthy_config()),
                warnings: vec![],
            },
            file_mode: Some(0o600),
            inline_token: true,
            token_files: vec![],
            runners: vec![RawRunner {
                name: "r1".into(),
                volumes: vec!["/data".into()],
                builds_dir: "/builds".into(),
                cache_dir: "/cache".into(),
                ..Default::default()
            }],
        },
        host: HostFacts {
            kernel_release: Some("6.1.0".into()),
            cgroup: Cgroup::V2,
            cgroup_driver: Some("systemd".into()),
            filesystems: vec!["ext4".into(), "overlay".into()],
            overlay_module: false,
            iptables: Ok("iptables v1.8.9 (nf_tables)".into()),
            bridge_netfilter: true,
            max_user_namespaces: Some(63000),
            cap_bnd: Some(0x1ff_ffff_ffff),
            tun_device: true,
            unprivileged_userns_clone: None,
            apparmor_restrict_userns: None,
            mem_available: Some(8 << 30),
            opens_sysfs: true,
        },
        docker: Ok(EngineFacts {
            server_version: "28.0.1".into(),
            api_version: "1.48".into(),
            components: vec![
                ("Engine".into(), "28.0.1".into()),
                ("containerd".into(), "1.7.27".into()),
                ("runc".into(), "1.2.8".into()),
            ],
            cgroup_version: "2".into(),
            cgroup_driver: "systemd".into(),
            storage_driver: "overlay2".into(),
            runtimes: vec!["runc".into()],
            security_options: vec![],
            kernel_version: "6.1.0".into(),
            root_dir: "/var/lib/docker".into(),
        }),
        images: vec![ImageFact {
            role: "sidecar",
            image: "isolated-runner/dind:test".into(),
            present: Ok(true),
        }],
        networks: Some(vec![NetFact {
            name: "bridge".into(),
            subnets: vec!["172.17.0.0/16".into()],
            labels: HashMap::new(),
        }]),
        disks: vec![
            DiskFact {
                id: "disk.builds",
                path: "/builds".into(),
                measured: "/".into(),
                space: Ok((100 * GIB, 200 * GIB)),
            },
            DiskFact {
                id: "disk.cache",
                path: "/cache".into(),
                measured: "/".into(),
                space: Ok((100 * GIB, 200 * GIB)),
            },
        ],
        acl: vec![AclFact {
            builds_dir: "/builds".into(),
            probe: AclProbe::Supported,
        }],
        leftovers: Some(Leftovers::default()),
        netpolicy: NetpolicyFacts {
            needed: true,
            installed: Ok(vec![]),
            running_jobs: vec![],
        },
        gitlab: vec![GitlabFact {
            runner: "r1".into(),
            url: "https://gitlab.example.com/".parse().unwrap(),
            probe: Ok(Probe {
                status: 302,
                server_date: Some(now),
                local_date: now,
            }),
            token: TokenFact::Valid,
        }],
        deep: None,
        mirrors: vec![],
        root_stores: vec![crate::doctor::facts::RootStoreFact {
            runner: "r1".into(),
            state: RootStoreState::WillMount {
                dir: "/var/lib/isolated-runner/roots".into(),
                image: "/var/lib/isolated-runner/roots.img".into(),
            },
        }],
        cache_stores: vec![],
    }
}

fn by_id(f: &Facts, id: &str) -> Check {
    evaluate(f)
        .into_iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no check {id}"))
}

fn assert_status(f: &Facts, id: &str, status: Status) -> Check {
    let c = by_id(f, id);
    assert_eq!(c.status, status, "{id}: {c:?}");
    if status != Status::Ok && status != Status::Skip {
        assert!(!c.hint.is_empty(), "{id} needs a hint: {c:?}");
    }
    c
}

#[test]
fn healthy_host_is_all_ok() {
    let f = healthy();
    let checks = evaluate(&f);
    assert!(checks.len() >= 15);
    for c in &checks {
        assert_eq!(c.status, Status::Ok, "{c:?}");
    }
    let mut ids: Vec<&str> = checks.iter().map(|c| c.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), checks.len(), "ids are unique");
}

#[test]
fn without_config_config_and_gitlab_skip() {
    let mut f = healthy();
    f.config.state = ConfigState::Absent;
    f.config.runners.clear();
    f.gitlab.clear();
    f.disks.clear();
    for id in [
        "config.loads",
        "config.permissions",
        "config.volumes",
        "disk.builds",
        "images.present",
        "network.address_pool",
        "gitlab.reachable",
        "gitlab.token",
    ] {
        let c = assert_status(&f, id, Status::Skip);
        if id.starts_with("config") {
            assert!(c.hint.contains("--config"), "{c:?}");
        }
    }
    assert_status(&f, "docker.reachable", Status::Ok);
}

#[test]
fn config_loads() {
    let mut f = healthy();
    f.config.state = ConfigState::Invalid {
        path: "/c.toml".into(),
        errors: vec!["/c.toml:3: [runners.docker] volumes: mounts the socket".into()],
        warnings: vec![],
    };
    let c = assert_status(&f, "config.loads", Status::Fail);
    assert!(c.hint.contains("/c.toml:3"));
    f.config.state = ConfigState::Unreadable {
        path: "/nope".into(),
        detail: "permission denied".into(),
    };
    assert_status(&f, "config.loads", Status::Fail);
    f.config.state = ConfigState::Loaded {
        path: "/c.toml".into(),
        config: Box::new(healthy_config()),
        warnings: vec!["/c.toml:9: privileged: ignored".into()],
    };
    let c = assert_status(&f, "config.loads", Status::Warn);
    assert!(c.hint.contains("/c.toml:9"));
}

#[test]
fn config_permissions() {
    let mut f = healthy();
    f.config.file_mode = Some(0o644);
    let c = assert_status(&f, "config.permissions", Status::Fail);
    assert!(c.hint.contains("chmod 600"));
    f.config.file_mode = Some(0o640);
    assert_status(&f, "config.permissions", Status::Warn);
    f.config.inline_token = false;
    f.config.token_files = vec![("/etc/ir/token".into(), Some(0o604))];
    assert_status(&f, "config.permissions", Status::Fail);
    f.config.token_files = vec![("/etc/ir/token".into(), Some(0o400))];
    assert_status(&f, "config.permissions", Status::Ok);
}

#[test]
fn config_volumes() {
    let mut f = healthy();
    f.config.runners[0].volumes = vec!["/var/run/docker.sock:/var/run/docker.sock".into()];
    let c = assert_status(&f, "config.volumes", Status::Fail);
    assert!(c.hint.contains("remove"));
    f.config.runners[0].shared_socket = true;
    assert_status(&f, "config.volumes", Status::Warn);
    f.config.runners[0].shared_socket = false;
    f.config.runners[0].volumes = vec!["/builds:/builds".into()];
    assert_status(&f, "config.volumes", Status::Warn);
    f.config.runners[0].volumes = vec![];
    f.config.runners[0].privileged = true;
    assert_status(&f, "config.volumes", Status::Warn);
}

#[test]
fn host_cgroup() {
    let mut f = healthy();
    f.host.cgroup = Cgroup::V1 { hybrid: false };
    if let ConfigState::Loaded { config, .. } = &mut f.config.state {
        config.runners[0].docker.isolation.sidecar_profile = SidecarProfile::Hardened;
    }
    let c = assert_status(&f, "host.cgroup", Status::Ok);
    assert!(c.message.contains("v1"));
    if let ConfigState::Loaded { config, .. } = &mut f.config.state {
        config.runners[0].docker.isolation.sidecar_profile = SidecarProfile::Privileged;
    }
    let c = assert_status(&f, "host.cgroup", Status::Warn);
    assert!(c.message.contains("release_agent"));
    assert!(
        !c.message.contains("no per-container limits"),
        "{}",
        c.message
    );
    // rootless on v1: inner containers get no limits of their own; a warning that names the
    // runner and points at the limits that do hold.
    if let ConfigState::Loaded { config, .. } = &mut f.config.state {
        config.runners[0].docker.isolation.sidecar_profile = SidecarProfile::Rootless;
    }
    let c = assert_status(&f, "host.cgroup", Status::Warn);
    assert!(
        c.message.contains("no per-container limits"),
        "{}",
        c.message
    );
    assert!(
        c.message
            .contains(&f.config.loaded().unwrap().runners[0].name)
    );
    assert!(!c.message.contains("release_agent"), "{}", c.message);
    assert!(c.hint.contains("sidecar_memory"), "{}", c.hint);
    // The same runner on a v2 host: no such warning.
    f.host.cgroup = Cgroup::V2;
    assert_status(&f, "host.cgroup", Status::Ok);
    f.host.cgroup = Cgroup::Unknown("no such file".into());
    assert_status(&f, "host.cgroup", Status::Warn);
}

#[test]
fn host_kernel() {
    let mut f = healthy();
    f.host.filesystems = vec!["ext4".into()];
    let c = assert_status(&f, "host.kernel", Status::Fail);
    assert!(c.message.contains("overlay"));
    f.host.overlay_module = true;
    assert_status(&f, "host.kernel", Status::Ok);
    f.host.iptables = Err("not found".into());
    assert_status(&f, "host.kernel", Status::Fail);
    f.host.iptables = Ok("iptables v1.8.9".into());
    f.host.max_user_namespaces = Some(0);
    assert_status(&f, "host.kernel", Status::Warn);
}

#[test]
fn disks() {
    let mut f = healthy();
    f.disks[0].space = Ok((GIB, 200 * GIB));
    assert_status(&f, "disk.builds", Status::Fail);
    f.disks[0].space = Ok((5 * GIB, 200 * GIB));
    assert_status(&f, "disk.builds", Status::Warn);
    f.disks[1].space = Err("no such file".into());
    assert_status(&f, "disk.cache", Status::Warn);
    f.disks[1].space = Ok((3 * GIB, 1000 * GIB));
    assert_status(&f, "disk.cache", Status::Fail);
}

#[test]
fn leftovers_found() {
    let mut f = healthy();
    f.leftovers = Some(Leftovers {
        items: vec!["container ir-x-1-sidecar: its runner process is gone".into()],
        failures: vec![],
    });
    let c = assert_status(&f, "leftovers", Status::Warn);
    assert!(c.hint.contains("runner cleanup"));
    f.leftovers = None;
    assert_status(&f, "leftovers", Status::Skip);
}

#[test]
fn docker_down() {
    let mut f = healthy();
    f.docker = Err("connection refused".into());
    f.networks = None;
    f.leftovers = None;
    assert_status(&f, "docker.reachable", Status::Fail);
    for id in [
        "docker.api_version",
        "docker.runc",
        "docker.containerd",
        "images.present",
        "sidecar.profiles",
        "network.address_pool",
    ] {
        assert_status(&f, id, Status::Skip);
    }
}

#[test]
fn api_version() {
    let mut f = healthy();
    if let Ok(e) = &mut f.docker {
        e.api_version = "1.40".into();
    }
    assert_status(&f, "docker.api_version", Status::Fail);
    if let Ok(e) = &mut f.docker {
        e.api_version = "1.41".into();
    }
    assert_status(&f, "docker.api_version", Status::Ok);
    if let Ok(e) = &mut f.docker {
        e.api_version = "".into();
    }
    assert_status(&f, "docker.api_version", Status::Warn);
}

#[test]
fn runc_and_containerd_versions() {
    let mut f = healthy();
    if let Ok(e) = &mut f.docker {
        e.components = vec![
            ("containerd".into(), "1.6.20~ds1".into()),
            ("runc".into(), "1.1.5+ds1".into()),
        ];
    }
    let c = assert_status(&f, "docker.runc", Status::Warn);
    assert!(c.message.contains("CVE-2024-21626"), "{c:?}");
    assert!(c.hint.contains("1.2.8 or newer"), "{c:?}");
    assert!(c.hint.contains("security tracker"));
    let c = assert_status(&f, "docker.containerd", Status::Warn);
    assert!(c.message.contains("CVE-2024-40635"));
    assert!(c.hint.contains("1.6.38 or newer"), "{c:?}");
    if let Ok(e) = &mut f.docker {
        e.components.clear();
    }
    assert_status(&f, "docker.runc", Status::Warn);
}

#[test]
fn images() {
    let mut f = healthy();
    f.images.push(ImageFact {
        role: "helper",
        image: "helper:1".into(),
        present: Ok(false),
    });
    // A job or helper image is pulled by the first job that needs it: a warning.
    let c = assert_status(&f, "images.present", Status::Warn);
    assert!(c.message.contains("helper:1"));
    assert!(c.message.contains("pulled by the first job"));
    // The sidecar image is the admin's to load: missing fails.
    f.images.push(ImageFact {
        role: "sidecar",
        image: "dind:1".into(),
        present: Ok(false),
    });
    let c = assert_status(&f, "images.present", Status::Fail);
    assert!(c.message.contains("dind:1") && !c.message.contains("helper:1"));
    assert!(c.hint.contains("never pulls sidecar or preloaded"));
}

#[test]
fn sidecar_profiles_static() {
    let mut f = healthy();
    // This CI host: no CAP_SYS_RESOURCE in the bounding set.
    f.host.cap_bnd = Some(0x1fffeffffff);
    let c = assert_status(&f, "sidecar.profiles", Status::Ok);
    assert!(c.message.contains("privileged: no"), "{c:?}");
    if let ConfigState::Loaded { config, .. } = &mut f.config.state {
        config.runners[0].docker.isolation.sidecar_profile = SidecarProfile::Privileged;
    }
    let c = assert_status(&f, "sidecar.profiles", Status::Fail);
    assert!(c.hint.contains("hardened"));
    if let ConfigState::Loaded { config, .. } = &mut f.config.state {
        config.runners[0].docker.isolation.sidecar_profile = SidecarProfile::Sysbox;
    }
    assert_status(&f, "sidecar.profiles", Status::Fail);
    if let Ok(e) = &mut f.docker {
        e.runtimes.push("sysbox-runc".into());
    }
    assert_status(&f, "sidecar.profiles", Status::Ok);
}

#[test]
fn rootless_says_why_it_cannot_run() {
    let rootless = |f: &mut Facts| {
        if let ConfigState::Loaded { config, .. } = &mut f.config.state {
            config.runners[0].docker.isolation.sidecar_profile = SidecarProfile::Rootless;
        }
    };
    let mut f = healthy();
    rootless(&mut f);
    assert_status(&f, "sidecar.profiles", Status::Ok);
    type Breaks = fn(&mut HostFacts);
    let cases: [(Breaks, &str); 4] = [
        (|h| h.tun_device = false, "/dev/net/tun"),
        (|h| h.max_user_namespaces = Some(0), "max_user_namespaces"),
        (
            |h| h.unprivileged_userns_clone = Some(0),
            "unprivileged_userns_clone",
        ),
        (
            |h| h.apparmor_restrict_userns = Some(1),
            "apparmor_restrict",
        ),
    ];
    let c = assert_status(&f, "sidecar.profiles", Status::Ok);
    assert!(c.message.contains("inner runtime crun"), "{}", c.message);
    // A runner that is not root cannot open the sidecar's /sys: rootless still runs, on runc,
    // and the check says what that costs.
    let mut n = healthy();
    rootless(&mut n);
    n.host.opens_sysfs = false;
    let c = assert_status(&n, "sidecar.profiles", Status::Ok);
    assert!(
        c.message.contains("inner runtime runc") && c.message.contains("not root"),
        "{}",
        c.message
    );
    for (break_it, why) in cases {
        let mut g = healthy();
        rootless(&mut g);
        break_it(&mut g.host);
        let c = assert_status(&g, "sidecar.profiles", Status::Fail);
        assert!(
            c.message.contains("rootless: no") && c.message.contains(why),
            "{}",
            c.message
        );
    }
}

#[test]
fn sidecar_profiles_deep() {
    let mut f = healthy();
    f.deep = Some(vec![
        // The configured (default) profile first.
        DeepResult {
            profile: SidecarProfile::Rootless,
            result: Err("newuidmap: write to uid_map failed".into()),
        },
        DeepResult {
            profile: SidecarProfile::Hardened,
            result: Err("ProfileUnavailable: unable to apply caps".into()),
        },
        DeepResult {
            profile: SidecarProfile::Sysbox,
            result: Err("no sysbox-runc".into()),
        },
        DeepResult {
            profile: SidecarProfile::Privileged,
            result: Err("unable to apply caps".into()),
        },
    ]);
    let c = assert_status(&f, "sidecar.profiles", Status::Fail);
    assert!(c.message.contains("started"));
    f.deep.as_mut().unwrap()[0].result = Ok(Duration::from_millis(2900));
    let c = assert_status(&f, "sidecar.profiles", Status::Ok);
    assert!(c.message.contains("2.9s"), "{c:?}");
}

#[test]
fn address_pool() {
    let mut f = healthy();
    if let ConfigState::Loaded { config, .. } = &mut f.config.state {
        config.runners[0].docker.isolation.address_pool = "10.213.0.0/26".parse().unwrap();
    }
    // Three of the four /28s taken.
    f.networks.as_mut().unwrap().push(NetFact {
        name: "x".into(),
        subnets: vec!["10.213.0.0/27".into(), "10.213.0.32/28".into()],
        labels: HashMap::new(),
    });
    let c = assert_status(&f, "network.address_pool", Status::Fail);
    assert!(c.message.contains("1 of 4"), "{c:?}");
    if let ConfigState::Loaded { config, .. } = &mut f.config.state {
        config.concurrent = 1;
    }
    assert_status(&f, "network.address_pool", Status::Ok);
}

#[test]
fn free_block_arithmetic() {
    let pool: Ipv4Net = "10.0.0.0/24".parse().unwrap();
    assert_eq!(free_blocks(pool, &[]), (16, 16));
    let used: Vec<Ipv4Net> = vec![
        "10.0.0.0/28".parse().unwrap(),
        "10.0.0.0/27".parse().unwrap(),
        "10.0.0.200/30".parse().unwrap(),
        "10.0.0.0/8".parse().unwrap(),
    ];
    assert_eq!(free_blocks(pool, &used[..3]), (13, 16));
    assert_eq!(free_blocks(pool, &used), (0, 16));
    assert_eq!(
        free_blocks(pool, &["192.168.0.0/16".parse().unwrap()]),
        (16, 16)
    );
}

#[test]
fn netpolicy() {
    let mut f = healthy();
    f.netpolicy.installed = Err("iptables: not found".into());
    assert_status(&f, "netpolicy.rules", Status::Fail);
    f.netpolicy.installed = Ok(vec![]);
    f.netpolicy.running_jobs = vec![("s_abcdef123456".into(), 7)];
    assert_status(&f, "netpolicy.rules", Status::Warn);
    f.netpolicy.installed = Ok(vec![InstalledRule {
        job_id: 7,
        runner_id: "s_abcdef".into(),
        chain: "IR-s_abcdef-7".into(),
        families: vec![],
    }]);
    assert_status(&f, "netpolicy.rules", Status::Ok);
    f.netpolicy.needed = false;
    assert_status(&f, "netpolicy.rules", Status::Skip);
}

#[test]
fn gitlab_unreachable() {
    let mut f = healthy();
    f.gitlab[0].probe = Err(ProbeError {
        tls: false,
        message: "connection refused".into(),
    });
    f.gitlab[0].token = TokenFact::NotTried("gitlab did not answer".into());
    assert_status(&f, "gitlab.reachable", Status::Fail);
    assert_status(&f, "gitlab.tls", Status::Skip);
    assert_status(&f, "gitlab.token", Status::Skip);
    assert_status(&f, "gitlab.clock_skew", Status::Skip);
}

#[test]
fn gitlab_tls() {
    let mut f = healthy();
    f.gitlab[0].probe = Err(ProbeError {
        tls: true,
        message: "invalid peer certificate: Expired".into(),
    });
    let c = assert_status(&f, "gitlab.tls", Status::Fail);
    assert!(c.hint.contains("tls-ca-file"));
    f.gitlab[0].url = "http://gitlab.example.com/".parse().unwrap();
    f.gitlab[0].probe = Ok(Probe {
        status: 200,
        server_date: None,
        local_date: SystemTime::now(),
    });
    assert_status(&f, "gitlab.tls", Status::Warn);
    f.gitlab[0].url = "http://127.0.0.1:8080/".parse().unwrap();
    assert_status(&f, "gitlab.tls", Status::Skip);
}

#[test]
fn gitlab_token() {
    let mut f = healthy();
    f.gitlab[0].token = TokenFact::Refused {
        status: 403,
        message: "403 Forbidden".into(),
    };
    let c = assert_status(&f, "gitlab.token", Status::Fail);
    assert!(c.hint.contains("runner register"));
    f.gitlab[0].token = TokenFact::Error("500".into());
    assert_status(&f, "gitlab.token", Status::Warn);
}

#[test]
fn clock_skew() {
    let mut f = healthy();
    let now = SystemTime::now();
    let set = |f: &mut Facts, server: SystemTime| {
        f.gitlab[0].probe = Ok(Probe {
            status: 200,
            server_date: Some(server),
            local_date: now,
        });
    };
    set(&mut f, now - Duration::from_secs(90));
    let c = assert_status(&f, "gitlab.clock_skew", Status::Warn);
    assert!(c.message.contains("90s ahead"), "{c:?}");
    set(&mut f, now + Duration::from_secs(600));
    let c = assert_status(&f, "gitlab.clock_skew", Status::Fail);
    assert!(c.message.contains("behind"));
    set(&mut f, now + Duration::from_secs(2));
    assert_status(&f, "gitlab.clock_skew", Status::Ok);
}

fn find(checks: &[Check], id: &str) -> Check {
    checks
        .iter()
        .find(|c| c.id == id)
        .cloned()
        .unwrap_or_else(|| panic!("no check {id}"))
}

#[test]
fn rootless_acl() {
    let f = healthy();
    let c = find(&evaluate(&f), "sidecar.acl");
    assert_eq!(c.status, Status::Ok, "{c:?}");
    let mut f = healthy();
    f.acl[0].probe = AclProbe::Unsupported("EOPNOTSUPP: Operation not supported".into());
    let c = find(&evaluate(&f), "sidecar.acl");
    assert_eq!(c.status, Status::Fail);
    assert!(c.message.contains("/builds"), "{c:?}");
    assert!(c.hint.contains("POSIX ACLs"), "{c:?}");
    f.acl[0].probe = AclProbe::Missing;
    assert_eq!(find(&evaluate(&f), "sidecar.acl").status, Status::Warn);
    f.acl.clear();
    assert_eq!(find(&evaluate(&f), "sidecar.acl").status, Status::Skip);
}
