//! Our [`ContainerSpec`] as bollard's container-create body: the one place that knows how each
//! field maps onto Docker's `HostConfig` and `NetworkingConfig`.

use super::{ContainerSpec, MountSpec, PublishedPort};
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig,
    HostConfigCgroupnsModeEnum, Mount, MountType, NetworkingConfig, PortBinding, ResourcesUlimits,
    RestartPolicy, RestartPolicyNameEnum,
};
use std::collections::HashMap;

pub(super) fn container_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mounts = spec
        .mounts
        .iter()
        .map(|m| match m {
            MountSpec::Bind {
                source,
                target,
                read_only,
            } => Mount {
                typ: Some(MountType::BIND),
                source: Some(source.clone()),
                target: Some(target.clone()),
                read_only: Some(*read_only),
                ..Default::default()
            },
            MountSpec::Volume { name, target } => Mount {
                typ: Some(MountType::VOLUME),
                source: Some(name.clone()),
                target: Some(target.clone()),
                ..Default::default()
            },
            MountSpec::Tmpfs { target, size } => Mount {
                typ: Some(MountType::TMPFS),
                target: Some(target.clone()),
                tmpfs_options: size.map(|s| bollard::models::MountTmpfsOptions {
                    size_bytes: Some(s),
                    ..Default::default()
                }),
                ..Default::default()
            },
        })
        .collect();
    let host_config = HostConfig {
        mounts: Some(mounts),
        // Without a network the container gets `none`, never the default bridge.
        network_mode: Some(spec.network.clone().unwrap_or_else(|| "none".to_string())),
        privileged: Some(spec.privileged),
        cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
        cap_drop: (!spec.cap_drop.is_empty()).then(|| spec.cap_drop.clone()),
        security_opt: (!spec.security_opt.is_empty()).then(|| spec.security_opt.clone()),
        cgroupns_mode: spec
            .cgroupns_private
            .then_some(HostConfigCgroupnsModeEnum::PRIVATE),
        runtime: spec.runtime.clone(),
        memory: spec.memory,
        memory_swap: spec.memory,
        nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
        cpu_shares: spec.cpu_shares,
        pids_limit: spec.pids_limit,
        sysctls: (!spec.sysctls.is_empty()).then(|| spec.sysctls.clone()),
        ulimits: spec.nofile.map(|(soft, hard)| {
            vec![ResourcesUlimits {
                name: Some("nofile".to_string()),
                soft: Some(soft),
                hard: Some(hard),
            }]
        }),
        oom_score_adj: spec.oom_score_adj,
        init: spec.init.then_some(true),
        // Empty lists are what `systempaths=unconfined` sends: nothing masked, nothing ro.
        masked_paths: spec.unmask_system_paths.then(Vec::new),
        readonly_paths: spec.unmask_system_paths.then(Vec::new),
        extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
        dns: (!spec.dns.is_empty()).then(|| spec.dns.clone()),
        dns_search: (!spec.dns_search.is_empty()).then(|| spec.dns_search.clone()),
        devices: (!spec.devices.is_empty()).then(|| {
            spec.devices
                .iter()
                .map(|d| bollard::models::DeviceMapping {
                    path_on_host: Some(d.clone()),
                    path_in_container: Some(d.clone()),
                    cgroup_permissions: Some("rwm".to_string()),
                })
                .collect()
        }),
        port_bindings: (!spec.publish.is_empty()).then(|| port_bindings(&spec.publish)),
        restart_policy: spec.restart_unless_stopped.then_some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        readonly_rootfs: spec.read_only_root.then_some(true),
        ..Default::default()
    };
    let networking_config = spec.network.as_ref().map(|net| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            net.clone(),
            EndpointSettings {
                aliases: (!spec.aliases.is_empty()).then(|| spec.aliases.clone()),
                ipam_config: spec.ipv4.as_ref().map(|ip| EndpointIpamConfig {
                    ipv4_address: Some(ip.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )])),
    });
    let exposed_ports = (!spec.publish.is_empty()).then(|| {
        spec.publish
            .iter()
            .map(|p| format!("{}/tcp", p.container_port))
            .collect()
    });
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        exposed_ports,
        entrypoint: spec.entrypoint.clone(),
        cmd: spec.cmd.clone(),
        env: Some(spec.env.clone()),
        labels: Some(spec.labels.clone()),
        working_dir: spec.working_dir.clone(),
        user: spec.user.clone(),
        open_stdin: Some(spec.open_stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    }
}

/// `-p <ip>:<port>:<container>/tcp` per entry; port 0 is sent empty so the engine picks one.
fn port_bindings(publish: &[PublishedPort]) -> HashMap<String, Option<Vec<PortBinding>>> {
    let mut out: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in publish {
        out.entry(format!("{}/tcp", p.container_port))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: Some(p.host_ip.clone()),
                host_port: Some(if p.host_port == 0 {
                    String::new()
                } else {
                    p.host_port.to_string()
                }),
            });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_translates_limits_and_network() {
        let spec = ContainerSpec {
            name: "x".into(),
            image: "img".into(),
            network: Some("net".into()),
            aliases: vec!["docker".into()],
            ipv4: Some("10.0.0.2".into()),
            memory: Some(1 << 30),
            cpus: Some(1.5),
            cgroupns_private: true,
            unmask_system_paths: true,
            ..Default::default()
        };
        let b = container_body(&spec);
        let h = b.host_config.unwrap();
        assert_eq!(h.extra_hosts, None);
        assert_eq!(h.memory_swap, Some(1 << 30));
        assert_eq!(h.nano_cpus, Some(1_500_000_000));
        assert_eq!(h.network_mode.as_deref(), Some("net"));
        assert_eq!(h.masked_paths, Some(vec![]));
        let ep = &b.networking_config.unwrap().endpoints_config.unwrap()["net"];
        assert_eq!(ep.aliases.as_ref().unwrap(), &vec!["docker".to_string()]);
        let none = container_body(&ContainerSpec::default());
        assert_eq!(
            none.host_config.unwrap().network_mode.as_deref(),
            Some("none")
        );
    }
}
