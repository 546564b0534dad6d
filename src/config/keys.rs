//! The compatibility table: every key gitlab-runner documents for the docker executor, per
//! section, either honoured (the loader maps it into the model) or ignored with the reason the
//! warning gives. A key in neither list is a warning with a "did you mean" (gitlab-runner itself
//! starts with keys it does not know), except in our own `[runners.docker.isolation]` table,
//! where it is an error.

/// One section's known keys.
pub struct Section {
    /// Header as shown in messages, e.g. `[runners.docker]`; empty for the top level.
    pub name: &'static str,
    /// Keys mapped into the model.
    pub honoured: &'static [&'static str],
    /// Keys gitlab-runner knows that have no effect here, with the reason.
    pub ignored: &'static [(&'static str, &'static str)],
}

impl Section {
    /// The reason a key is ignored, if it is one of the ignored keys.
    pub fn ignored_reason(&self, key: &str) -> Option<&'static str> {
        self.ignored
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, reason)| *reason)
    }

    /// Every key this section knows, for suggestions.
    pub fn all_keys(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.honoured
            .iter()
            .copied()
            .chain(self.ignored.iter().map(|(k, _)| *k))
    }
}

const NOT_YET: &str = "not supported by isolated-runner yet; the job runs without it";
const OTHER_EXECUTOR: &str =
    "settings of another executor; isolated-runner only has the docker executor";
const WIDENS: &str = "it would widen the job container's privileges, which isolated jobs never get; \
                      use the job's own Docker daemon (DOCKER_HOST) for privileged work";
const NEVER_PRIVILEGED: &str = "job and service containers are never privileged in isolated mode; \
                                sidecar_profile decides the sidecar's privileges";
const ASSUME_ROLE: &str = "assuming a role is not supported yet; use AuthenticationType = \"iam\" \
                           with the instance's or pod's own role, or access keys";
const S3_ENDPOINT: &str = "endpoint variants are not supported yet; set ServerAddress to the \
                           endpoint you want instead";
const REGISTRATION: &str = "written by `gitlab-runner register`; not needed here";
const REMOVED_CACHE: &str = "removed in gitlab-runner 12.0 (it now belongs in [runners.cache.s3]), \
                             which ignores it here too";
const AUTOSCALING: &str = "autoscaling settings; isolated-runner runs every job on this host";
const SLOT_CGROUPS: &str = "slot cgroups belong to gitlab-runner's autoscaler; jobs here are \
                            limited by memory, cpus and pids_limit";
const SESSION: &str = "the interactive web terminal is not supported";

/// Top-level keys.
pub const GLOBAL: Section = Section {
    name: "",
    honoured: &[
        "concurrent",
        "check_interval",
        "listen_address",
        "shutdown_timeout",
        "log_level",
        "log_format",
        "state_dir",
        "runners",
    ],
    ignored: &[
        ("sentry_dsn", "errors are not sent to Sentry"),
        (
            "connection_max_age",
            "HTTP connections to GitLab are managed by the client's pool",
        ),
        ("session_server", SESSION),
        (
            "labels",
            "runner labels are not supported; jobs are routed by the tags set in GitLab",
        ),
        (
            "user",
            "the service user of the shell executor; jobs here always run in containers",
        ),
        ("experimental", NOT_YET),
        ("machine", AUTOSCALING),
        (
            "metrics_server",
            "removed in gitlab-runner 12.0; use listen_address for the metrics endpoint",
        ),
    ],
};

/// `[session_server]`: every key is ignored.
pub const SESSION_SERVER: Section = Section {
    name: "[session_server]",
    honoured: &[],
    ignored: &[
        ("listen_address", SESSION),
        ("advertise_address", SESSION),
        ("session_timeout", SESSION),
    ],
};

/// `[[runners]]`.
pub const RUNNER: Section = Section {
    name: "[[runners]]",
    honoured: &[
        "name",
        "url",
        "token",
        "token_file",
        "token_obtained_at",
        "token_expires_at",
        "tls-ca-file",
        "clone_url",
        "executor",
        "limit",
        "request_concurrency",
        "unhealthy_requests_limit",
        "unhealthy_interval",
        "builds_dir",
        "cache_dir",
        "environment",
        "pre_get_sources_script",
        "post_get_sources_script",
        "pre_clone_script",
        "post_clone_script",
        "pre_build_script",
        "post_build_script",
        "output_limit",
        "docker",
        "cache",
        "custom_build_dir",
        "feature_flags",
    ],
    ignored: &[
        ("id", REGISTRATION),
        (
            "tls-cert-file",
            "client certificates towards GitLab are not supported yet",
        ),
        (
            "tls-key-file",
            "client certificates towards GitLab are not supported yet",
        ),
        (
            "shell",
            "job scripts run with the job image's shell (bash, else sh)",
        ),
        ("debug_trace_disabled", NOT_YET),
        ("referees", "metrics referees are not supported"),
        ("job_status_final_update_retry_limit", NOT_YET),
        ("kubernetes", OTHER_EXECUTOR),
        ("machine", OTHER_EXECUTOR),
        ("autoscaler", OTHER_EXECUTOR),
        ("ssh", OTHER_EXECUTOR),
        ("parallels", OTHER_EXECUTOR),
        ("virtualbox", OTHER_EXECUTOR),
        ("custom", OTHER_EXECUTOR),
        ("instance", OTHER_EXECUTOR),
        (
            "labels",
            "runner labels are not supported; jobs are routed by the tags set in GitLab",
        ),
        (
            "clean_git_config",
            "the job's git config is never kept: every job fetches into a fresh directory",
        ),
        ("safe_directory_checkout", NOT_YET),
        ("proxy_exec", NOT_YET),
        ("prepare_timeout", NOT_YET),
        ("get_sources_timeout", NOT_YET),
        (
            "strict_check_interval",
            "the poll loop spreads check_interval across [[runners]] on its own schedule",
        ),
        (
            "step_runner_image",
            "CI steps (the step-runner) are not supported",
        ),
        ("monitoring", NOT_YET),
        ("use_slot_cgroups", SLOT_CGROUPS),
        ("slot_cgroup_template", SLOT_CGROUPS),
        ("artifact", NOT_YET),
        ("experimental", NOT_YET),
    ],
};

/// `[runners.docker]`.
pub const DOCKER: Section = Section {
    name: "[runners.docker]",
    honoured: &[
        "host",
        "image",
        "helper_image",
        "volumes",
        "memory",
        "memory_swap",
        "cpus",
        "pids_limit",
        "services_limit",
        "service_memory",
        "service_cpus",
        "privileged",
        "pull_policy",
        "allowed_pull_policies",
        "allowed_images",
        "allowed_services",
        "network_mtu",
        "isolation",
        "extra_hosts",
        "dns",
        "dns_search",
        "wait_for_services_timeout",
    ],
    ignored: &[
        (
            "tls_cert_path",
            "TLS to a remote host daemon is not supported; use a unix socket in `host`",
        ),
        (
            "tls_verify",
            "TLS to a remote host daemon is not supported; use a unix socket in `host`",
        ),
        ("hostname", NOT_YET),
        ("mac_address", NOT_YET),
        ("memory_reservation", NOT_YET),
        ("cpuset_cpus", NOT_YET),
        ("cpuset_mems", NOT_YET),
        ("cpu_shares", NOT_YET),
        ("cgroup_parent", NOT_YET),
        ("oom_kill_disable", NOT_YET),
        ("oom_score_adjust", NOT_YET),
        ("shm_size", NOT_YET),
        ("ulimit", NOT_YET),
        ("user", NOT_YET),
        ("group_add", NOT_YET),
        ("allowed_users", NOT_YET),
        ("tmpfs", NOT_YET),
        ("services_tmpfs", NOT_YET),
        ("container_labels", NOT_YET),
        ("disable_entrypoint_overwrite", NOT_YET),
        (
            "service_memory_swap",
            "services never swap: their swap limit equals service_memory",
        ),
        ("service_memory_reservation", NOT_YET),
        ("service_cpuset_cpus", NOT_YET),
        ("service_cpu_shares", NOT_YET),
        ("service_cgroup_parent", NOT_YET),
        (
            "service_gpus",
            "host devices are not passed into isolated jobs",
        ),
        ("cap_add", WIDENS),
        (
            "cap_drop",
            "isolated job containers already run with Docker's default capability set",
        ),
        ("security_opt", WIDENS),
        ("sysctls", WIDENS),
        ("userns_mode", WIDENS),
        ("ipcmode", WIDENS),
        ("devices", "host devices are not passed into isolated jobs"),
        (
            "services_devices",
            "host devices are not passed into isolated jobs",
        ),
        (
            "device_cgroup_rules",
            "host devices are not passed into isolated jobs",
        ),
        ("gpus", "host devices are not passed into isolated jobs"),
        (
            "runtime",
            "job containers use the default runtime; the sidecar's runtime follows sidecar_profile",
        ),
        ("services_privileged", NEVER_PRIVILEGED),
        ("allowed_privileged_images", NEVER_PRIVILEGED),
        ("allowed_privileged_services", NEVER_PRIVILEGED),
        (
            "network_mode",
            "each job gets its own private network; joining another network would let jobs see each other",
        ),
        (
            "links",
            "legacy container links; a job reaches its services over its own network",
        ),
        ("enable_ipv6", "job networks are IPv4 only"),
        (
            "volumes_from",
            "it would share another container's volumes with every job",
        ),
        (
            "volume_driver",
            "volumes are host binds or volumes of the job's own daemon; volume drivers are not used",
        ),
        (
            "volume_driver_ops",
            "volumes are host binds or volumes of the job's own daemon; volume drivers are not used",
        ),
        (
            "disable_cache",
            "no Docker cache volumes are created; the cache lives under [[runners]] cache_dir",
        ),
        (
            "cache_dir",
            "no Docker cache volumes are created; the cache lives under [[runners]] cache_dir",
        ),
        (
            "helper_image_flavor",
            "no gitlab-runner-helper image is chosen by flavour; set helper_image",
        ),
        (
            "helper_image_autoset_arch_and_os",
            "no gitlab-runner-helper image is chosen by flavour; set helper_image",
        ),
        (
            "services",
            "runner-wide default services are not supported; declare services in .gitlab-ci.yml",
        ),
        (
            "volume_keep",
            "no Docker cache volumes are created, so none are kept",
        ),
        ("services_security_opt", WIDENS),
        ("pid_mode", WIDENS),
        ("service_slot_cgroup_template", SLOT_CGROUPS),
        ("log_options", NOT_YET),
    ],
};

/// `[runners.docker.isolation]`: our own table, all honoured.
pub const ISOLATION: Section = Section {
    name: "[runners.docker.isolation]",
    honoured: &[
        "mode",
        "sidecar_image",
        "sidecar_profile",
        "rootless_uid_base",
        "sidecar_memory",
        "sidecar_cpus",
        "sidecar_pids_limit",
        "service_pids_limit",
        "network_mtu",
        "address_pool",
        "inner_address_pool",
        "data_root",
        "data_root_max_size",
        "data_root_max_age",
        "data_root_per_key",
        "registry_mirror",
        "registry_ca_files",
        "preload_images",
        "root_store",
        "root_store_size",
        "root_store_path",
        "egress",
        "block_private_networks",
        "inner_privileged",
        "ready_timeout",
        "host_path_map",
        "warm_pool",
        "warm_pool_max_idle",
        "mirror",
    ],
    ignored: &[],
};

/// `[runners.docker.isolation.mirror]`: our own table, all honoured.
pub const MIRROR: Section = Section {
    name: "[runners.docker.isolation.mirror]",
    honoured: &["upstream", "image", "storage_dir", "max_size", "port"],
    ignored: &[],
};

/// `[runners.cache]`. The store keys are read by `load/cache_store.rs`.
pub const CACHE: Section = Section {
    name: "[runners.cache]",
    honoured: &[
        "max_size",
        "max_age",
        "Type",
        "Path",
        "Shared",
        "MaxUploadedArchiveSize",
        "s3",
        "gcs",
        "azure",
    ],
    ignored: &[
        ("Insecure", REMOVED_CACHE),
        ("ServerAddress", REMOVED_CACHE),
        ("AccessKey", REMOVED_CACHE),
        ("SecretKey", REMOVED_CACHE),
        ("BucketName", REMOVED_CACHE),
        ("BucketLocation", REMOVED_CACHE),
    ],
};

/// `[runners.cache.s3]`.
pub const CACHE_S3: Section = Section {
    name: "[runners.cache.s3]",
    honoured: &[
        "ServerAddress",
        "AccessKey",
        "SecretKey",
        "SessionToken",
        "BucketName",
        "BucketLocation",
        "Insecure",
        "AuthenticationType",
        "ServerSideEncryption",
        "ServerSideEncryptionKeyID",
        "PathStyle",
    ],
    ignored: &[
        ("DualStack", S3_ENDPOINT),
        ("Accelerate", S3_ENDPOINT),
        ("RoleARN", ASSUME_ROLE),
        ("UploadRoleARN", ASSUME_ROLE),
        ("AssumeRoleMaxConcurrency", ASSUME_ROLE),
        ("DisableAssumeRoleCredentialsCaching", ASSUME_ROLE),
    ],
};

/// `[runners.cache.gcs]`.
pub const CACHE_GCS: Section = Section {
    name: "[runners.cache.gcs]",
    honoured: &[
        "CredentialsFile",
        "AccessID",
        "PrivateKey",
        "BucketName",
        "UniverseDomain",
    ],
    ignored: &[],
};

/// `[runners.cache.azure]`.
pub const CACHE_AZURE: Section = Section {
    name: "[runners.cache.azure]",
    honoured: &[
        "AccountName",
        "AccountKey",
        "ContainerName",
        "StorageDomain",
    ],
    ignored: &[],
};

/// `[runners.custom_build_dir]`.
pub const CUSTOM_BUILD_DIR: Section = Section {
    name: "[runners.custom_build_dir]",
    honoured: &["enabled"],
    ignored: &[],
};

/// Why every `[runners.feature_flags]` entry is ignored.
pub const FEATURE_FLAG_REASON: &str = "feature flags switch gitlab-runner's own implementation \
                                       details; isolated-runner has one behaviour";

/// Keys whose values are secrets: never quoted in a message, and scrubbed from every message.
pub const SECRET_KEYS: [&str; 8] = [
    "token",
    "SecretKey",
    "AccessKey",
    "SessionToken",
    "PrivateKey",
    "AccountKey",
    "sentry_dsn",
    "ServerSideEncryptionKeyID",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn no_key_is_both_honoured_and_ignored_or_listed_twice() {
        for s in [
            &GLOBAL,
            &SESSION_SERVER,
            &RUNNER,
            &DOCKER,
            &ISOLATION,
            &MIRROR,
            &CACHE,
            &CACHE_S3,
            &CACHE_GCS,
            &CACHE_AZURE,
            &CUSTOM_BUILD_DIR,
        ] {
            let mut seen = HashSet::new();
            for k in s.all_keys() {
                assert!(seen.insert(k), "{} lists {k} twice", s.name);
            }
        }
    }

    #[test]
    fn reasons_are_found() {
        assert!(DOCKER.ignored_reason("cap_add").is_some());
        assert!(DOCKER.ignored_reason("image").is_none());
    }
}
