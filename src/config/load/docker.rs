//! `[runners.docker]` with its `[runners.docker.isolation]` and `[runners.cache]` tables: the
//! job container's image and limits, and the isolation profile of the job's own daemon.

use super::*;

impl Loader {
    pub(super) fn docker(
        &mut self,
        t: &dyn TableLike,
        header: usize,
        facts: &mut DockerFacts,
    ) -> DockerConfig {
        let s = &keys::DOCKER;
        let mut d = DockerConfig::default();
        // The file's default when the isolation table is absent (see `warm_pool_auto`).
        d.isolation.warm_pool_auto = true;
        let mut docker_mtu: Option<u32> = None;
        let mut isolation_mtu_set = false;
        let mut saw_image = false;
        for (key, item) in t.iter() {
            let at = self.at(s, t, key, header);
            match key {
                "host" => {
                    if let Some(h) = self.non_empty_string(&at, item) {
                        d.host = Some(h);
                    }
                }
                "image" => {
                    saw_image = true;
                    if let Some(i) = self.non_empty_string(&at, item) {
                        d.image = i;
                    }
                }
                "helper_image" => d.helper_image = self.non_empty_string(&at, item),
                "volumes" => {
                    if let Some(list) = self.strings(&at, item) {
                        let lines: Vec<usize> = item
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|x| self.line_of(x.span()).unwrap_or(at.line))
                                    .collect()
                            })
                            .unwrap_or_default();
                        for (i, spec) in list.iter().enumerate() {
                            let vat = At {
                                path: at.path.clone(),
                                line: lines.get(i).copied().unwrap_or(at.line),
                            };
                            if let Some(parsed) = self.check(&vat, v::parse_volume(spec)) {
                                facts.volumes.push((vat, spec.clone(), parsed));
                            }
                        }
                        d.volumes = list;
                    }
                }
                "memory" => d.memory = self.size(&at, item),
                "memory_swap" => {
                    // Docker's convention: -1 lifts the swap limit.
                    if item.as_integer() == Some(-1) || item.as_str() == Some("-1") {
                        d.memory_swap = Some(-1);
                    } else if let Some(n) = self.size(&at, item) {
                        d.memory_swap =
                            self.check(&at, i64::try_from(n).map_err(|_| "too large".to_string()));
                    }
                }
                "cpus" => d.cpus = self.cpus(&at, item),
                "pids_limit" => d.pids_limit = self.integer(&at, item, 1, i64::from(u32::MAX)),
                // gitlab-runner's convention: -1 = no limit, 0 = no services at all.
                "services_limit" => {
                    if let Some(n) = self.integer(&at, item, -1, 1000) {
                        d.services_limit = usize::try_from(n).ok();
                    }
                }
                "service_memory" => d.service_memory = self.size(&at, item),
                "service_cpus" => d.service_cpus = self.cpus(&at, item),
                "privileged" => {
                    if let Some(b) = self.boolean(&at, item) {
                        d.privileged = b;
                        if b {
                            facts.privileged = Some(at.clone());
                        }
                    }
                }
                "pull_policy" => {
                    if let Some(list) = self.one_or_many(&at, item) {
                        let checked: Vec<String> = list
                            .iter()
                            .filter_map(|p| self.check(&at, v::check_pull_policy(p)))
                            .collect();
                        if !checked.is_empty() {
                            d.pull_policy = checked;
                        }
                    }
                }
                "allowed_pull_policies" => {
                    if let Some(list) = self.one_or_many(&at, item) {
                        d.allowed_pull_policies = list
                            .iter()
                            .filter_map(|p| self.check(&at, v::check_pull_policy(p)))
                            .collect();
                    }
                }
                "allowed_images" | "allowed_services" => {
                    if let Some(list) = self.strings(&at, item) {
                        for pattern in &list {
                            if let Err(e) = globset::Glob::new(pattern) {
                                self.error(&at, format!("`{pattern}` is not a valid pattern: {e}"));
                            }
                        }
                        if key == "allowed_images" {
                            d.allowed_images = list;
                        } else {
                            d.allowed_services = list;
                        }
                    }
                }
                "network_mtu" => {
                    docker_mtu = self.mtu(&at, item);
                }
                "extra_hosts" => {
                    if let Some(list) = self.strings(&at, item) {
                        for entry in &list {
                            self.check(&at, v::check_extra_host(entry));
                        }
                        d.extra_hosts = list;
                    }
                }
                "dns" => {
                    if let Some(list) = self.strings(&at, item) {
                        d.dns = list
                            .iter()
                            .filter_map(|s| {
                                let parsed = s
                                    .parse::<std::net::IpAddr>()
                                    .map_err(|_| format!("`{s}` is not an IP address"));
                                self.check(&at, parsed)
                            })
                            .collect();
                    }
                }
                "dns_search" => {
                    if let Some(list) = self.strings(&at, item) {
                        for domain in &list {
                            self.check(&at, v::check_search_domain(domain));
                        }
                        d.dns_search = list;
                    }
                }
                "wait_for_services_timeout" => {
                    // As gitlab-runner: a negative value disables the wait, 0 is the default.
                    if let Some(n) = self.integer(&at, item, i64::MIN, i64::from(u32::MAX)) {
                        d.wait_for_services_timeout = match n {
                            n if n < 0 => None,
                            0 => Some(DEFAULT_WAIT_FOR_SERVICES),
                            n => Some(std::time::Duration::from_secs(n.unsigned_abs())),
                        };
                    }
                }
                "isolation" => {
                    if item.is_str() {
                        // gitlab-runner's `isolation` is a Windows container setting.
                        self.warn(
                            &at,
                            "ignored: this is gitlab-runner's Windows container isolation \
                             (process/hyperv); isolated-runner's settings live in the \
                             [runners.docker.isolation] table",
                        );
                    } else if let Some(it) = item.as_table_like() {
                        let line = self.item_line(item, at.line);
                        let (iso, mtu_set) = self.isolation(it, line);
                        d.isolation = iso;
                        isolation_mtu_set = mtu_set;
                    } else {
                        self.type_error(&at, "a table", item);
                    }
                }
                _ => self.not_honoured(s, &at, key, item),
            }
        }
        // gitlab-runner's own `network_mtu` means the same thing; our table wins when both are set.
        if let Some(mtu) = docker_mtu
            && !isolation_mtu_set
        {
            d.isolation.network_mtu = mtu;
        }
        if !saw_image {
            self.warn(
                &At {
                    path: "[runners.docker] image".into(),
                    line: header,
                },
                format!(
                    "no default image: jobs that do not name an `image:` run in `{}`; set image",
                    d.image
                ),
            );
        }
        if d.isolation.mode == IsolationMode::SharedSocket {
            // Socket volumes are allowed then; nothing else to do here.
        }
        d
    }

    pub(super) fn cache(&mut self, t: &dyn TableLike, header: usize) -> CacheConfig {
        let s = &keys::CACHE;
        let mut c = CacheConfig {
            store: self.cache_store(t, header),
            ..CacheConfig::default()
        };
        for (key, item) in t.iter() {
            let at = self.at(s, t, key, header);
            match key {
                "max_size" => c.max_size = self.size(&at, item),
                "max_age" => c.max_age = self.positive_duration(&at, item, false),
                // The distributed store's keys: see `load/cache_store.rs`.
                k if super::cache_store::STORE_KEYS.contains(&k) => {}
                _ => self.not_honoured(s, &at, key, item),
            }
        }
        c
    }

    pub(super) fn isolation(
        &mut self,
        t: &dyn TableLike,
        header: usize,
    ) -> (IsolationConfig, bool) {
        let s = &keys::ISOLATION;
        let mut iso = IsolationConfig {
            // The file's default (see `IsolationConfig::warm_pool_auto`).
            warm_pool_auto: true,
            ..IsolationConfig::default()
        };
        let mut mtu_set = false;
        let mut pool_at = None;
        let mut inner_at = None;
        let mut pools_ok = true;
        let mut data_root_limits = Vec::new();
        let mut mirror_at = None;
        let mut inner_privileged_at = None;
        let mut mirror_url_at: Option<At> = None;
        for (key, item) in t.iter() {
            let at = self.at(s, t, key, header);
            match key {
                "mode" => match self.string(&at, item).as_deref() {
                    Some("dind") => iso.mode = IsolationMode::Dind,
                    Some("shared-socket") => {
                        iso.mode = IsolationMode::SharedSocket;
                        self.warn(
                            &at,
                            "jobs share the host's Docker daemon: any job can take over the host \
                             and see every other job; use this only on a trusted, single-tenant \
                             host (or to measure the baseline with `runner bench`)",
                        );
                    }
                    Some(other) => self.error(
                        &at,
                        format!("`{other}` is not a mode (\"dind\" or \"shared-socket\")"),
                    ),
                    None => {}
                },
                "sidecar_image" => {
                    if let Some(i) = self.non_empty_string(&at, item) {
                        iso.sidecar_image = i;
                    }
                }
                "sidecar_profile" => match self.string(&at, item).as_deref() {
                    Some("rootless") => iso.sidecar_profile = SidecarProfile::Rootless,
                    Some("sysbox") => iso.sidecar_profile = SidecarProfile::Sysbox,
                    Some("hardened") => {
                        iso.sidecar_profile = SidecarProfile::Hardened;
                        self.warn(
                            &at,
                            "the hardened sidecar holds SYS_ADMIN and NET_ADMIN in the host's \
                             user namespace: it guards against accidents, it is not a boundary \
                             against a hostile job (docs/sidecar-profiles.md); prefer \
                             \"rootless\" where `runner doctor` says it works",
                        );
                    }
                    Some("privileged") => {
                        iso.sidecar_profile = SidecarProfile::Privileged;
                        self.warn(
                            &at,
                            "the sidecar runs privileged: a job that escapes its own daemon is \
                             root on the host; prefer \"sysbox\" or \"hardened\" where they work \
                             (`runner doctor` says which)",
                        );
                    }
                    Some(other) => self.error(
                        &at,
                        format!(
                            "`{other}` is not a sidecar profile (\"rootless\", \"sysbox\", \"hardened\" or \"privileged\")"
                        ),
                    ),
                    None => {}
                },
                "sidecar_memory" => iso.sidecar_memory = self.size(&at, item),
                "sidecar_cpus" => iso.sidecar_cpus = self.cpus(&at, item),
                "sidecar_pids_limit" => {
                    iso.sidecar_pids_limit = self.integer(&at, item, 1, i64::from(u32::MAX))
                }
                "service_pids_limit" => {
                    iso.service_pids_limit = self.integer(&at, item, 1, i64::from(u32::MAX))
                }
                "network_mtu" => {
                    mtu_set = true;
                    if let Some(m) = self.mtu(&at, item) {
                        iso.network_mtu = m;
                    }
                }
                "address_pool" | "inner_address_pool" => {
                    let parsed = self
                        .string(&at, item)
                        .and_then(|s| self.check(&at, v::parse_pool(&s)));
                    match parsed {
                        Some(net) if key == "address_pool" => {
                            iso.address_pool = net;
                            pool_at = Some(at);
                        }
                        Some(net) => {
                            iso.inner_address_pool = net;
                            inner_at = Some(at);
                        }
                        None => pools_ok = false,
                    }
                }
                "data_root" => match self.string(&at, item).as_deref() {
                    Some("ephemeral") => iso.data_root = DataRoot::Ephemeral,
                    Some("project") => iso.data_root = DataRoot::Project,
                    Some(other) => self.error(
                        &at,
                        format!("`{other}` is not a data root (\"ephemeral\" or \"project\")"),
                    ),
                    None => {}
                },
                "data_root_max_size" => {
                    iso.data_root_max_size = self.size(&at, item);
                    data_root_limits.push(at);
                }
                "data_root_max_age" => {
                    iso.data_root_max_age = self.positive_duration(&at, item, false);
                    data_root_limits.push(at);
                }
                "mirror" => match item.as_table_like() {
                    Some(mt) => {
                        let line = self.item_line(item, at.line);
                        iso.mirror = Some(self.mirror(mt, line));
                        mirror_at = Some(at);
                    }
                    None => self.type_error(&at, "a table ([runners.docker.isolation.mirror])", item),
                },
                "registry_mirror" => {
                    mirror_url_at = Some(at.clone());
                    if let Some(s) = self.string(&at, item)
                        && !s.trim().is_empty()
                    {
                        iso.registry_mirror = self
                            .check(&at, v::parse_http_url(&s))
                            .map(|u| u.to_string());
                    }
                }
                "preload_images" => {
                    if let Some(list) = self.strings(&at, item) {
                        if list.iter().any(|i| i.trim().is_empty()) {
                            self.error(&at, "an image name is empty");
                        }
                        iso.preload_images = list;
                    }
                }
                "root_store" => match self.string(&at, item).as_deref() {
                    Some("auto") => iso.root_store = RootStore::Auto,
                    Some("off") => iso.root_store = RootStore::Off,
                    Some(other) => self.error(
                        &at,
                        format!("`{other}` is not a root store mode (\"auto\" or \"off\")"),
                    ),
                    None => {}
                },
                "root_store_size" => {
                    if let Some(n) = self.size(&at, item) {
                        // mkfs.btrfs refuses smaller devices; a store this small holds nothing.
                        if n < 1024 * 1024 * 1024 {
                            self.error(&at, "the root store needs at least 1 GiB");
                        } else {
                            iso.root_store_size = n;
                        }
                    }
                }
                "root_store_path" => {
                    iso.root_store_path = self.abs_path(&at, item);
                }
                "egress" => {
                    if let Some(word) = item.as_str() {
                        match word {
                            "allow" => iso.egress = Egress::Allow,
                            "deny" => iso.egress = Egress::Deny,
                            other => self.error(
                                &at,
                                format!("`{other}` is not an egress policy (\"allow\", \"deny\", or a list of CIDRs)"),
                            ),
                        }
                    } else if let Some(list) = self.strings(&at, item) {
                        let nets: Vec<_> = list
                            .iter()
                            .filter_map(|e| self.check(&at, v::parse_egress_entry(e)))
                            .collect();
                        iso.egress = Egress::AllowList(nets);
                    }
                }
                "block_private_networks" => {
                    if let Some(b) = self.boolean(&at, item) {
                        iso.block_private_networks = b;
                    }
                }
                "inner_privileged" => {
                    if let Some(b) = self.boolean(&at, item) {
                        iso.inner_privileged = b;
                        if b {
                            inner_privileged_at = Some(at);
                        }
                    }
                }
                "ready_timeout" => {
                    if let Some(d) = self.positive_duration(&at, item, false) {
                        iso.ready_timeout = d;
                    }
                }
                "warm_pool" => {
                    if item.as_str() == Some("auto") {
                        iso.warm_pool_auto = true;
                    } else if item.is_str() {
                        self.error(&at, "expected \"auto\" or a number of sidecars (0 to 64)");
                    } else if let Some(n) = self.integer(&at, item, 0, 64) {
                        iso.warm_pool = n as usize;
                        iso.warm_pool_auto = false;
                    }
                }
                "data_root_per_key" => {
                    if let Some(n) = self.integer(&at, item, 1, 64) {
                        iso.data_root_per_key = n as usize;
                    }
                    data_root_limits.push(at);
                }
                "rootless_uid_base" => {
                    // The blocks must stay below the kernel's largest uid (2^32 - 2).
                    let max = i64::from(u32::MAX) - 1 - crate::config::ROOTLESS_UID_SPAN;
                    if let Some(n) = self.integer(&at, item, 1, max) {
                        iso.rootless_uid_base = n as u32;
                    }
                }
                "warm_pool_max_idle" => {
                    if let Some(d) = self.positive_duration(&at, item, false) {
                        iso.warm_pool_max_idle = d;
                    }
                }
                "registry_ca_files" => match item.as_table_like() {
                    Some(map) => {
                        let mut out = BTreeMap::new();
                        for (host, file) in map.iter() {
                            let entry_at = At {
                                path: format!("{} {host}", at.path),
                                line: map
                                    .key(host)
                                    .and_then(|k| self.line_of(k.span()))
                                    .unwrap_or(at.line),
                            };
                            let host = self.check(&entry_at, v::check_registry_host(host));
                            let file = self
                                .abs_path(&entry_at, file)
                                .and_then(|f| self.check(&entry_at, v::check_ca_file(f)));
                            if let (Some(h), Some(f)) = (host, file) {
                                out.insert(h, f);
                            }
                        }
                        iso.registry_ca_files = out;
                    }
                    None => self.type_error(&at, "an inline table of registry hosts to CA files, like { \"registry.corp:5000\" = \"/etc/ssl/corp-ca.crt\" }", item),
                },
                "host_path_map" => match item.as_table_like() {
                    Some(map) => {
                        let mut out = BTreeMap::new();
                        for (from, to) in map.iter() {
                            let entry_at = At {
                                path: format!("{} {from}", at.path),
                                line: map
                                    .key(from)
                                    .and_then(|k| self.line_of(k.span()))
                                    .unwrap_or(at.line),
                            };
                            let from_path = self.check(&entry_at, v::parse_absolute_path(from));
                            let to_path = self.abs_path(&entry_at, to);
                            if let (Some(f), Some(t)) = (from_path, to_path) {
                                out.insert(f, t);
                            }
                        }
                        iso.host_path_map = out;
                    }
                    None => self.type_error(&at, "an inline table of paths, like { \"/builds\" = \"/srv/builds\" }", item),
                },
                _ => self.not_honoured(s, &at, key, item),
            }
        }
        if pools_ok && v::nets_overlap(&iso.address_pool, &iso.inner_address_pool) {
            let at = inner_at.or(pool_at).unwrap_or(At {
                path: "[runners.docker.isolation] inner_address_pool".into(),
                line: header,
            });
            self.error(
                &at,
                format!(
                    "{} overlaps address_pool {}: a job's inner networks would collide with job \
                     bridges on the host; choose disjoint ranges",
                    iso.inner_address_pool, iso.address_pool
                ),
            );
        }
        if let (Some(at), Some(_)) = (mirror_url_at, mirror_at.as_ref()) {
            self.error(
                &at,
                "set either registry_mirror (a mirror you run) or the                  [runners.docker.isolation.mirror] table (a mirror the runner runs), not both",
            );
        }
        if let Some(at) = mirror_at
            && iso.mode == IsolationMode::SharedSocket
        {
            self.warn(
                &at,
                "has no effect with mode = \"shared-socket\": jobs use the host's daemon and its \
                 own mirror settings",
            );
        }
        if let Some(at) = inner_privileged_at {
            match (iso.mode, iso.sidecar_profile) {
                (IsolationMode::SharedSocket, _) => self.warn(
                    &at,
                    "has no effect with mode = \"shared-socket\": jobs use the host's daemon, \
                     where --privileged is host root",
                ),
                (_, SidecarProfile::Rootless | SidecarProfile::Sysbox) => {}
                (_, _) => self.warn(
                    &at,
                    "a privileged inner container holds the sidecar's privileges on the host \
                     with this sidecar_profile (docs/sidecar-profiles.md, \"Inner --privileged\")",
                ),
            }
        }
        if iso.data_root == DataRoot::Ephemeral {
            for at in data_root_limits {
                self.warn(
                    &at,
                    "has no effect: it applies only with data_root = \"project\"",
                );
            }
        }
        (iso, mtu_set)
    }
}
