//! Loader tests: each rule on a small document, asserting key, line and message.

use super::*;
use std::time::Duration;

const TOKEN: &str = "glrt-SUPERSECRETtoken123";

fn runner(extra_runner: &str, docker: &str) -> String {
    format!(
        "concurrent = 2\n\
         [[runners]]\n\
         name = \"r\"\n\
         url = \"https://gitlab.example.com/\"\n\
         token = \"{TOKEN}\"\n\
         executor = \"docker\"\n\
         {extra_runner}\n\
         [runners.docker]\n\
         image = \"debian:12\"\n\
         {docker}\n"
    )
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match load_str(text, "config.toml") {
        Ok(l) => panic!("expected errors, got a config; warnings: {:?}", l.warnings),
        Err(e) => e
            .diagnostics()
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .cloned()
            .collect(),
    }
}

fn warnings(text: &str) -> Vec<Diagnostic> {
    match load_str(text, "config.toml") {
        Ok(l) => l.warnings,
        Err(e) => panic!("expected a config, got: {e}"),
    }
}

fn find<'a>(diags: &'a [Diagnostic], needle: &str) -> &'a Diagnostic {
    diags
        .iter()
        .find(|d| d.to_string().contains(needle))
        .unwrap_or_else(|| panic!("no diagnostic containing {needle:?} in {diags:#?}"))
}

#[test]
fn minimal_config_loads_with_defaults() {
    let loaded = load_str(&runner("", ""), "config.toml").unwrap();
    let c = &loaded.config;
    assert_eq!(c.concurrent, 2);
    assert_eq!(c.check_interval, Duration::from_secs(3));
    let r = &c.runners[0];
    assert_eq!(r.url.as_str(), "https://gitlab.example.com/");
    assert_eq!(r.token.expose(), TOKEN);
    assert_eq!(r.docker.image, "debian:12");
    assert_eq!(r.docker.isolation.mode, IsolationMode::Dind);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn unknown_key_is_a_warning_with_line_and_suggestion() {
    let w = warnings(&runner("", "volumez = []"));
    let d = find(&w, "volumez");
    assert_eq!(d.line, 10);
    assert_eq!(d.key_path, "[runners.docker] volumez");
    assert!(d.message.contains("no effect"), "{d}");
    assert!(d.message.contains("did you mean `volumes`?"), "{d}");
    assert_eq!(
        d.to_string(),
        format!("config.toml:10: [runners.docker] volumez: {}", d.message)
    );
    let w = warnings("concurent = 3\n");
    assert!(find(&w, "concurent").message.contains("`concurrent`"));
    let w = warnings("banana = 3\n");
    assert!(!find(&w, "banana").message.contains("did you mean"));
    // Unknown keys in tables gitlab-runner owns, however deep, only warn.
    let w = warnings(&runner(
        "[runners.cache]\nInsecure = false\n[runners.cache.s3]\nBucketNam = \"b\"",
        "",
    ));
    find(&w, "[runners.cache.s3] BucketNam: unknown key");
    find(&w, "did you mean `BucketName`?");
}

#[test]
fn unknown_key_in_the_isolation_table_is_an_error() {
    let e = errors(&runner(
        "",
        "[runners.docker.isolation]\nsidecar_profil = \"hardened\"",
    ));
    let d = find(&e, "sidecar_profil");
    assert_eq!(d.line, 11);
    assert!(d.message.contains("did you mean `sidecar_profile`?"), "{d}");
}

#[test]
fn removed_and_current_gitlab_runner_keys_warn_with_a_reason() {
    let text = format!(
        "metrics_server = \"127.0.0.1:9252\"\nlabels = {{ team = \"ci\" }}\n{}",
        runner(
            "clean_git_config = true\nprepare_timeout = \"1m\"\n\
             [runners.cache]\nType = \"s3\"\nInsecure = false\nServerAddress = \"s3.example.com\"\n\
             SecretKey = \"very-secret-key-42\"\n[runners.cache.s3]\nAssumeRoleMaxConcurrency = 2\n\
             BucketName = \"b\"\nAuthenticationType = \"iam\"",
            "volume_keep = true\npid_mode = \"host\"\nlog_options = { max-size = \"10m\" }",
        )
    );
    let w = warnings(&text);
    assert!(find(&w, "metrics_server").message.contains("removed"));
    assert_eq!(find(&w, "metrics_server").line, 1);
    find(&w, "labels: ignored");
    find(&w, "clean_git_config: ignored");
    find(&w, "prepare_timeout: ignored");
    let insecure = find(&w, "[runners.cache] Insecure");
    assert!(
        insecure.message.contains("removed in gitlab-runner 12.0"),
        "{insecure}"
    );
    find(&w, "[runners.cache] ServerAddress: ignored");
    find(&w, "[runners.cache.s3] AssumeRoleMaxConcurrency: ignored");
    find(&w, "[runners.docker] volume_keep: ignored");
    find(&w, "[runners.docker] pid_mode: ignored");
    find(&w, "[runners.docker] log_options: ignored");
    assert!(
        !w.iter()
            .any(|d| d.to_string().contains("very-secret-key-42"))
    );
    assert!(
        !w.iter().any(|d| d.message.contains("unknown key")),
        "{w:#?}"
    );
}

#[test]
fn ignored_key_is_a_warning_naming_the_reason() {
    let w = warnings(&runner("shell = \"bash\"", "cap_add = [\"NET_ADMIN\"]"));
    let d = find(&w, "shell");
    assert_eq!(d.line, 7);
    assert!(d.message.starts_with("ignored: "));
    let d = find(&w, "cap_add");
    assert_eq!(d.line, 10);
    assert!(d.message.contains("privileges"));
}

#[test]
fn type_errors_name_key_and_line() {
    let e = errors(&runner("limit = \"ten\"", "privileged = \"yes\""));
    assert_eq!(find(&e, "limit").line, 7);
    assert!(
        find(&e, "limit")
            .message
            .contains("expected an integer, found a string")
    );
    assert_eq!(find(&e, "privileged").line, 10);
}

#[test]
fn all_errors_are_collected() {
    let text = runner(
        "builds_dir = \"relative\"",
        "memory = \"4x\"\n[runners.docker.isolation]\nready_timeout = \"soon\"\naddress_pool = \"bad\"",
    );
    let e = errors(&text);
    assert!(e.len() >= 4, "{e:#?}");
    find(&e, "builds_dir");
    find(&e, "memory");
    find(&e, "ready_timeout");
    find(&e, "address_pool");
}

#[test]
fn syntax_error_has_line_and_no_secret() {
    let text = format!("concurrent = 1\n[[runners]]\ntoken = \"{TOKEN}\nurl = 3\n");
    let err = load_str(&text, "config.toml").unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("not valid TOML"), "{shown}");
    assert!(!shown.contains("SUPERSECRET"), "{shown}");
    assert!(err.diagnostics()[0].line >= 3);
}

#[test]
fn token_never_in_output() {
    let text = runner(
        "tokn = 1",
        "volumes = [\"/var/run/docker.sock:/var/run/docker.sock\"]",
    );
    let err = load_str(&text, "config.toml").unwrap_err();
    assert!(!err.to_string().contains(TOKEN));
    assert!(!format!("{err:?}").contains(TOKEN));
    let loaded = load_str(&runner("", ""), "config.toml").unwrap();
    assert!(!format!("{loaded:?}").contains(TOKEN));
}

#[test]
fn docker_socket_refused_in_dind_with_line() {
    for volume in [
        "/var/run/docker.sock:/var/run/docker.sock",
        "/run/docker.sock:/var/run/docker.sock",
        "/var/run:/var/run",
        "/home/ci/docker.sock:/var/run/docker.sock",
    ] {
        let text = runner(
            "",
            &format!("volumes = [\n  \"/data\",\n  \"{volume}\",\n]"),
        );
        let e = errors(&text);
        let d = find(&e, volume);
        assert_eq!(d.line, 12, "{d}");
        assert_eq!(d.key_path, "[runners.docker] volumes");
        assert!(d.message.contains("take over the host"), "{d}");
        assert!(d.message.contains("DOCKER_HOST"), "{d}");
    }
}

#[test]
fn docker_socket_allowed_in_shared_socket_mode() {
    let text = runner(
        "",
        "volumes = [\"/var/run/docker.sock:/var/run/docker.sock\"]\n\
         [runners.docker.isolation]\nmode = \"shared-socket\"",
    );
    let w = warnings(&text);
    assert!(find(&w, "mode").message.contains("trusted"));
    assert!(
        !w.iter().any(|d| d.message.contains("docker.sock")),
        "{w:#?}"
    );
}

#[test]
fn shared_volumes_and_privileged_warn_in_dind() {
    let text = runner(
        "",
        "privileged = true\nvolumes = [\"/builds:/builds\", \"/cache:/cache\", \"/tmp:/tmp\", \"/root/.ssh:/root/.ssh\"]",
    );
    let w = warnings(&text);
    assert!(find(&w, "privileged").message.contains("never privileged"));
    find(&w, "`/builds:/builds` shares the host's builds directory");
    find(&w, "`/cache:/cache` shares the whole cache directory");
    find(&w, "`/tmp:/tmp`");
    find(&w, "SSH keys");
}

#[test]
fn privileged_quiet_in_shared_socket_mode() {
    let text = runner(
        "",
        "privileged = true\n[runners.docker.isolation]\nmode = \"shared-socket\"",
    );
    let w = warnings(&text);
    assert!(!w.iter().any(|d| d.key_path.ends_with("privileged")));
}

#[test]
fn inner_privileged_is_read_and_warned_where_it_gives_the_host() {
    let iso = |body: &str| {
        let text = runner("", &format!("[runners.docker.isolation]\n{body}"));
        let c = load_str(&text, "config.toml").unwrap().config;
        (
            c.runners[0].docker.isolation.inner_privileged,
            warnings(&text),
        )
    };
    let (on, w) = iso("");
    assert!(!on, "refused by default");
    assert!(!w.iter().any(|d| d.key_path.ends_with("inner_privileged")));
    let (on, w) = iso("inner_privileged = true");
    assert!(on);
    assert!(
        !w.iter().any(|d| d.key_path.ends_with("inner_privileged")),
        "rootless: confined"
    );
    let (_, w) = iso("inner_privileged = true\nsidecar_profile = \"hardened\"");
    let d = find(&w, "holds the sidecar's privileges on the host");
    assert!(d.key_path.ends_with("inner_privileged"), "{}", d.key_path);
    let (_, w) = iso("inner_privileged = true\nmode = \"shared-socket\"");
    find(&w, "has no effect with mode = \"shared-socket\"");
    let e = errors(&runner(
        "",
        "[runners.docker.isolation]\ninner_privileged = \"yes\"",
    ));
    assert!(find(&e, "inner_privileged").line > 0);
}

#[test]
fn rootless_is_the_default_and_hardened_is_warned() {
    let c = load_str(&runner("", ""), "config.toml").unwrap().config;
    assert_eq!(
        c.runners[0].docker.isolation.sidecar_profile,
        SidecarProfile::Rootless
    );
    let text = runner(
        "",
        "[runners.docker.isolation]\nsidecar_profile = \"hardened\"",
    );
    let w = warnings(&text);
    assert!(
        w.iter().any(|d| d.message.contains("not a boundary")),
        "{w:?}"
    );
    let text = runner(
        "",
        "[runners.docker.isolation]\nrootless_uid_base = 4294967000",
    );
    assert!(load_str(&text, "config.toml").is_err());
}

#[test]
fn isolation_table_maps_every_key() {
    let text = runner(
        "",
        r#"[runners.docker.isolation]
mode = "dind"
sidecar_image = "docker:27-dind"
sidecar_profile = "sysbox"
rootless_uid_base = 200000000
sidecar_memory = "4g"
sidecar_cpus = "2"
sidecar_pids_limit = 2048
network_mtu = 1450
address_pool = "10.50.0.0/16"
inner_address_pool = "10.60.0.0/16"
data_root = "project"
data_root_max_size = "20g"
data_root_max_age = "7d"
registry_mirror = "http://mirror.internal:5000"
preload_images = ["alpine:3"]
egress = ["10.0.0.0/8", "192.0.2.1"]
ready_timeout = "90s"
host_path_map = { "/builds" = "/srv/runner/builds" }
warm_pool = 3
warm_pool_max_idle = "10m"
"#,
    );
    let c = load_str(&text, "config.toml").unwrap().config;
    let i = &c.runners[0].docker.isolation;
    assert_eq!(i.sidecar_image, "docker:27-dind");
    assert_eq!(i.sidecar_profile, SidecarProfile::Sysbox);
    assert_eq!(i.rootless_uid_base, 200_000_000);
    assert_eq!(i.sidecar_memory, Some(4 << 30));
    assert_eq!(i.sidecar_cpus, Some(2.0));
    assert_eq!(i.sidecar_pids_limit, Some(2048));
    assert_eq!(i.network_mtu, 1450);
    assert_eq!(i.address_pool.to_string(), "10.50.0.0/16");
    assert_eq!(i.inner_address_pool.to_string(), "10.60.0.0/16");
    assert_eq!(i.data_root, DataRoot::Project);
    assert_eq!(i.data_root_max_size, Some(20 << 30));
    assert_eq!(i.data_root_max_age, Some(Duration::from_secs(7 * 86400)));
    assert_eq!(
        i.registry_mirror.as_deref(),
        Some("http://mirror.internal:5000/")
    );
    assert_eq!(i.preload_images, vec!["alpine:3"]);
    assert_eq!(
        i.egress,
        Egress::AllowList(vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.1/32".parse().unwrap()
        ])
    );
    assert_eq!(i.ready_timeout, Duration::from_secs(90));
    assert_eq!(i.warm_pool, 3);
    assert!(!i.warm_pool_auto, "a number pins the pool's size");
    assert_eq!(i.warm_pool_max_idle, Duration::from_secs(600));
    assert_eq!(
        i.host_path_map.get(std::path::Path::new("/builds")),
        Some(&std::path::PathBuf::from("/srv/runner/builds"))
    );
}

#[test]
fn isolation_errors() {
    let text = runner(
        "",
        r#"[runners.docker.isolation]
mode = "vm"
sidecar_profile = "root"
address_pool = "10.0.0.0/8"
inner_address_pool = "10.214.0.0/16"
data_root = "warm"
registry_mirror = "ftp://mirror"
egress = "sometimes"
host_path_map = { "builds" = "/srv" }
network_mtu = 10
"#,
    );
    let e = errors(&text);
    find(&e, "`vm` is not a mode");
    find(&e, "`root` is not a sidecar profile");
    assert!(
        find(&e, "overlaps address_pool")
            .key_path
            .ends_with("inner_address_pool")
    );
    find(&e, "`warm` is not a data root");
    find(&e, "ftp");
    find(&e, "`sometimes` is not an egress policy");
    find(&e, "`builds` is not an absolute path");
    find(&e, "too small for an MTU");
}

#[test]
fn warm_pool_is_bounded() {
    let e = errors(&runner(
        "",
        "[runners.docker.isolation]\nwarm_pool = 65\nwarm_pool_max_idle = \"0s\"",
    ));
    assert!(e.iter().any(|d| d.key_path.ends_with("warm_pool")));
    assert!(e.iter().any(|d| d.key_path.ends_with("warm_pool_max_idle")));
}

/// A file that says nothing about the pool gets the auto size (with or without the isolation
/// table); "auto" says so explicitly; anything else is an error naming the key.
#[test]
fn warm_pool_is_auto_by_default() {
    let c = load_str(&runner("", ""), "config.toml").unwrap().config;
    let i = &c.runners[0].docker.isolation;
    assert!(i.warm_pool_auto);
    assert_eq!(i.warm_pool, 0);
    assert_eq!(
        i.data_root_per_key,
        crate::config::DEFAULT_DATA_ROOT_PER_KEY
    );
    let c = load_str(
        &runner(
            "",
            "[runners.docker.isolation]\npreload_images = [\"alpine:3\"]\ndata_root = \"project\"\ndata_root_per_key = 3",
        ),
        "config.toml",
    )
    .unwrap()
    .config;
    let i = &c.runners[0].docker.isolation;
    assert!(
        i.warm_pool_auto,
        "only preload_images: the fast path without tuning"
    );
    assert_eq!(i.data_root_per_key, 3);
    let c = load_str(
        &runner("", "[runners.docker.isolation]\nwarm_pool = \"auto\""),
        "config.toml",
    )
    .unwrap()
    .config;
    assert!(c.runners[0].docker.isolation.warm_pool_auto);
    let e = errors(&runner(
        "",
        "[runners.docker.isolation]\nwarm_pool = \"many\"",
    ));
    assert!(e.iter().any(|d| d.key_path.ends_with("warm_pool")), "{e:?}");
    let e = errors(&runner(
        "",
        "[runners.docker.isolation]\ndata_root = \"project\"\ndata_root_per_key = 0",
    ));
    assert!(
        e.iter().any(|d| d.key_path.ends_with("data_root_per_key")),
        "{e:?}"
    );
    // Without warm roots it does nothing, and says so.
    let w = warnings(&runner(
        "",
        "[runners.docker.isolation]\ndata_root_per_key = 2",
    ));
    assert!(
        w.iter().any(|d| d.key_path.ends_with("data_root_per_key")),
        "{w:?}"
    );
}

#[test]
fn data_root_limits_warn_when_ephemeral() {
    let w = warnings(&runner(
        "",
        "[runners.docker.isolation]\ndata_root_max_size = \"10g\"",
    ));
    find(&w, "only with data_root = \"project\"");
}

#[test]
fn gitlab_runner_units_are_converted() {
    let text = "check_interval = 0\nshutdown_timeout = 45\n".to_string()
        + &runner(
            "output_limit = 8192",
            "memory = \"512m\"\nmemory_swap = \"1g\"\ncpus = \"1.5\"",
        );
    let c = load_str(&text, "config.toml").unwrap().config;
    assert_eq!(c.check_interval, Duration::from_secs(3), "0 = the default");
    assert_eq!(c.shutdown_timeout, Duration::from_secs(45));
    let r = &c.runners[0];
    assert_eq!(r.output_limit, 8192 * 1024);
    assert_eq!(r.docker.memory, Some(512 << 20));
    assert_eq!(r.docker.memory_swap, Some(1 << 30));
    assert_eq!(r.docker.cpus, Some(1.5));
    let c = load_str(&runner("", "memory_swap = \"-1\""), "c")
        .unwrap()
        .config;
    assert_eq!(c.runners[0].docker.memory_swap, Some(-1));
}

#[test]
fn windows_isolation_string_is_a_warning() {
    let w = warnings(&runner("", "isolation = \"process\""));
    find(&w, "Windows");
}

#[test]
fn docker_network_mtu_is_a_fallback() {
    let c = load_str(&runner("", "network_mtu = 1400"), "c")
        .unwrap()
        .config;
    assert_eq!(c.runners[0].docker.isolation.network_mtu, 1400);
}

#[test]
fn runner_requires_url_and_token() {
    let e = errors("[[runners]]\nname = \"x\"\n");
    assert_eq!(find(&e, "`url` is missing").line, 1);
    let w = load_str(
        "[[runners]]\nname = \"x\"\nurl = \"https://gitlab.example.com/\"\n",
        "c",
    )
    .expect("a runner without a token still loads (exec only)")
    .warnings;
    assert!(
        w.iter()
            .any(|d| d.message.contains("no `token` or `token_file`"))
    );
    let e = load_str(
        &runner("executor2 = 1", "").replace("https://", "ssh://"),
        "c",
    )
    .expect_err("an ssh url is an error")
    .diagnostics()
    .to_vec();
    find(&e, "http://");
    find(&e, "did you mean `executor`?");
}

#[test]
fn other_executor_is_an_error() {
    let text = runner("", "").replace("executor = \"docker\"", "executor = \"shell\"");
    find(&errors(&text), "executor `shell` is not supported");
}

#[test]
fn feature_flags_and_cache_tables_warn_per_key() {
    let text = runner(
        "[runners.feature_flags]\nFF_USE_FASTZIP = true\n\
         [runners.cache]\nType = \"s3\"\nShared = true\nmax_size = \"10g\"\n\
         [runners.cache.s3]\nServerAddress = \"s3.example.com\"\nAccessKey = \"AKIAEXAMPLE\"\n\
         SecretKey = \"verysecretkey123\"\nBucketName = \"b\"\nDualStack = true\n\
         [runners.cache.gcs]\nBucketName = \"g\"\n[runners.custom_build_dir]\nenabled = false",
        "",
    );
    let loaded = load_str(&text, "c").unwrap();
    let w = &loaded.warnings;
    find(w, "[runners.feature_flags] FF_USE_FASTZIP");
    find(w, "[runners.cache.s3] DualStack: ignored");
    find(w, "[runners.cache] gcs: ignored: Type is \"s3\"");
    assert!(!format!("{w:?}").contains("verysecretkey123"));
    assert_eq!(loaded.config.runners[0].cache.max_size, Some(10 << 30));
    let store = loaded.config.runners[0]
        .cache
        .store
        .as_ref()
        .expect("store");
    assert!(store.shared);
    assert_eq!(store.s3.bucket_name, "b");
    assert_eq!(
        store.s3.secret_key.as_ref().map(|s| s.expose()),
        Some("verysecretkey123")
    );
    assert!(!format!("{store:?}").contains("verysecretkey123"));
    assert!(!loaded.config.runners[0].custom_build_dir);

    // gitlab-runner decodes the table as a map of booleans: any name loads, a non-boolean fails.
    let w = warnings(&runner("[runners.feature_flags]\nUSE_FASTZIP = true", ""));
    find(&w, "`USE_FASTZIP` is not a feature flag");
    let e = errors(&runner(
        "[runners.feature_flags]\nFF_USE_FASTZIP = \"yes\"",
        "",
    ));
    find(&e, "expected true or false");
}

#[test]
fn session_server_is_ignored_with_warnings() {
    let text = runner("", "")
        + "[session_server]\nlisten_address = \"0.0.0.0:8093\"\nsession_timeout = 1800\n";
    let w = warnings(&text);
    find(&w, "[session_server] listen_address");
    find(&w, "[session_server] session_timeout");
}

#[test]
fn token_file_is_read_and_permissions_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, "glrt-fromfile999\n").unwrap();
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = runner("", "").replace(&format!("token = \"{TOKEN}\""), "token_file = \"token\"");
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, &config).unwrap();
    let loaded = load(&config_path).unwrap();
    let r = &loaded.config.runners[0];
    assert_eq!(r.token.expose(), "glrt-fromfile999");
    assert_eq!(r.token_file.as_deref(), Some(token_path.as_path()));
    let d = find(&loaded.warnings, "chmod 600");
    assert_eq!(d.key_path, "[[runners]] token_file");

    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let loaded = load(&config_path).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    std::fs::remove_file(&token_path).unwrap();
    let err = load(&config_path).unwrap_err();
    find(err.diagnostics(), "cannot read");
}

#[test]
fn inline_token_in_readable_file_warns() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, runner("", "")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loaded = load(&path).unwrap();
    assert_eq!(find(&loaded.warnings, "chmod 600").line, 5);
}

#[test]
fn both_token_and_token_file_is_an_error() {
    let e = errors(&runner("token_file = \"/nonexistent/token\"", ""));
    find(&e, "both `token` and `token_file`");
}

#[test]
fn environment_and_pull_policies() {
    let text = runner(
        "environment = [\"A=1\", \"B=two=2\"]",
        "pull_policy = [\"always\", \"if-not-present\"]\nallowed_pull_policies = \"never\"",
    );
    let r = load_str(&text, "c").unwrap().config.runners.remove(0);
    assert_eq!(
        r.environment,
        vec![("A".into(), "1".into()), ("B".into(), "two=2".into())]
    );
    assert_eq!(r.docker.pull_policy, vec!["always", "if-not-present"]);
    assert_eq!(r.docker.allowed_pull_policies, vec!["never"]);
    let e = errors(&runner(
        "environment = [\"NOVALUE\"]",
        "pull_policy = \"sometimes\"",
    ));
    find(&e, "no `=`");
    find(&e, "`sometimes` is not a pull policy");
}

#[test]
fn error_display_lists_everything_with_lines() {
    let err = load_str(&runner("limit = -1", "memory = \"lots\""), "config.toml").unwrap_err();
    let shown = err.to_string();
    assert!(shown.starts_with("config.toml: 2 errors"), "{shown}");
    assert!(
        shown.contains("config.toml:7: [[runners]] limit"),
        "{shown}"
    );
    assert!(
        shown.contains("config.toml:10: [runners.docker] memory"),
        "{shown}"
    );
}

#[test]
fn defaults_still_work() {
    let c = Config::default();
    assert_eq!(c.concurrent, 1);
    assert!(RunnerConfig::default().custom_build_dir);
    assert_eq!(DockerConfig::default().memory_swap, None);
}

#[test]
fn every_ignored_gitlab_runner_key_loads_with_a_warning() {
    for (key, _) in keys::DOCKER.ignored {
        if *key == "services" {
            continue; // an array of tables in gitlab-runner; covered below
        }
        let w = warnings(&runner("", &format!("{key} = 1")));
        let d = find(&w, &format!("[runners.docker] {key}:"));
        assert_eq!(d.line, 10);
        assert!(d.message.starts_with("ignored: "), "{d}");
    }
    for (key, _) in keys::RUNNER.ignored {
        let w = warnings(&runner(&format!("{key} = 1"), ""));
        assert_eq!(find(&w, &format!("[[runners]] {key}:")).line, 7);
    }
    let w = warnings(&(runner("", "") + "[[runners.docker.services]]\nname = \"postgres\"\n"));
    find(&w, "[runners.docker] services: ignored");
    let w = warnings(&(runner("", "") + "[runners.kubernetes]\nnamespace = \"ci\"\n"));
    find(&w, "[[runners]] kubernetes: ignored");
}

#[test]
fn extra_hosts_and_dns_are_honoured_and_checked() {
    let c = load_str(
        &runner(
            "",
            "extra_hosts = [\"gitlab.corp.test:10.1.2.3\", \"v6.corp.test:2001:db8::1\", \"gw:host-gateway\"]\n\
             dns = [\"10.1.0.53\"]\ndns_search = [\"corp.test\"]",
        ),
        "c",
    )
    .expect("loads")
    .config;
    let d = &c.runners[0].docker;
    assert_eq!(d.extra_hosts.len(), 3);
    assert_eq!(
        d.dns,
        vec!["10.1.0.53".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(d.dns_search, vec!["corp.test"]);
    let e = errors(&runner(
        "",
        "extra_hosts = [\"nohost\"]\ndns = [\"dns.example.com\"]\ndns_search = [\"a b\"]",
    ));
    assert_eq!(find(&e, "extra_hosts").line, 10);
    find(&e, "`nohost` is not host:ip");
    find(&e, "`dns.example.com` is not an IP address");
    find(&e, "`a b` is not a search domain");
}

#[test]
fn service_limits_load() {
    let c = load_str(
        &runner(
            "",
            "services_limit = 3\nservice_memory = \"512m\"\nservice_cpus = \"0.5\"\n\
             [runners.docker.isolation]\nservice_pids_limit = 256\n",
        ),
        "config.toml",
    )
    .unwrap()
    .config;
    let d = &c.runners[0].docker;
    assert_eq!(d.services_limit, Some(3));
    assert_eq!(d.service_memory, Some(512 << 20));
    assert_eq!(d.service_cpus, Some(0.5));
    assert_eq!(d.isolation.service_pids_limit, Some(256));
    let d = load_str(&runner("", ""), "config.toml")
        .unwrap()
        .config
        .runners[0]
        .docker
        .clone();
    assert_eq!(
        d.services_limit,
        Some(crate::config::DEFAULT_SERVICES_LIMIT)
    );
    // gitlab-runner's convention: -1 = no limit, 0 = no services.
    let d = load_str(&runner("", "services_limit = -1"), "config.toml")
        .unwrap()
        .config
        .runners[0]
        .docker
        .clone();
    assert_eq!(d.services_limit, None);
    let d = load_str(&runner("", "services_limit = 0"), "config.toml")
        .unwrap()
        .config
        .runners[0]
        .docker
        .clone();
    assert_eq!(d.services_limit, Some(0));
    find(&errors(&runner("", "services_limit = -2")), "out of range");
    // service_memory_swap is known and ignored with its reason.
    find(
        &warnings(&runner("", "service_memory_swap = \"1g\"")),
        "services never swap",
    );
}

#[test]
fn wait_for_services_timeout_as_gitlab_runner_reads_it() {
    let timeout = |docker: &str| {
        let l = load_str(&runner("", docker), "config.toml").expect("loads");
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        l.config.runners[0].docker.wait_for_services_timeout
    };
    assert_eq!(timeout(""), Some(Duration::from_secs(30)));
    assert_eq!(
        timeout("wait_for_services_timeout = 0"),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        timeout("wait_for_services_timeout = 90"),
        Some(Duration::from_secs(90))
    );
    assert_eq!(timeout("wait_for_services_timeout = -1"), None);
    let e = errors(&runner("", "wait_for_services_timeout = \"30s\""));
    assert!(find(&e, "wait_for_services_timeout").line > 0);
}

#[test]
fn cache_stores_are_checked_and_name_the_key() {
    let e = errors(&runner("[runners.cache]\nType = \"ftp\"", ""));
    find(&e, "[runners.cache] Type");
    let e = errors(&runner(
        "[runners.cache]\nType = \"s3\"\n[runners.cache.s3]\nAccessKey = \"a\"\nBucketName = \"b\"",
        "",
    ));
    assert!(
        find(&e, "[runners.cache] Type")
            .message
            .contains("SecretKey")
    );
    let e = errors(&runner("[runners.cache]\nType = \"azure\"", ""));
    assert!(find(&e, "Type").message.contains("AccountName"));
    let e = errors(&runner(
        "[runners.cache]\nType = \"s3\"\nPath = \"../x\"\n[runners.cache.s3]\nBucketName = \"b\"",
        "",
    ));
    find(&e, "[runners.cache] Path");
    let e = errors(&runner(
        "[runners.cache]\nType = \"s3\"\n[runners.cache.s3]\nBucketName = \"b\"\n\
         ServerSideEncryption = \"KMS\"",
        "",
    ));
    assert!(find(&e, "ServerSideEncryption").message.contains("KeyID"));

    let text = runner(
        "[runners.cache]\nType = \"gcs\"\nPath = \"/ci/\"\nMaxUploadedArchiveSize = 1024\n\
         [runners.cache.gcs]\nBucketName = \"g\"\nAccessID = \"sa@p.iam\"\nPrivateKey = \"pem-secret-77\"",
        "",
    );
    let loaded = load_str(&text, "c").unwrap();
    let store = loaded.config.runners[0].cache.store.clone().expect("store");
    assert_eq!(store.kind, CacheStoreType::Gcs);
    assert_eq!(store.path, "ci");
    assert_eq!(store.max_uploaded_archive_size, Some(1024));
    assert!(!store.shared);
    assert!(!format!("{:?}", loaded.warnings).contains("pem-secret-77"));

    // Without a Type the store's keys do nothing, and say so.
    let w = warnings(&runner(
        "[runners.cache]\nShared = true\n[runners.cache.s3]\nBucketName = \"b\"",
        "",
    ));
    find(&w, "[runners.cache] Shared: ignored: no cache Type");
    let loaded = load_str(
        &runner("[runners.cache]\nType = \"\"\n[runners.cache.s3]", ""),
        "c",
    )
    .unwrap();
    assert!(loaded.config.runners[0].cache.store.is_none());
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn registry_ca_files_name_hosts_and_certificates() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("corp-ca.crt");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let not_pem = d.path().join("notes.txt");
    std::fs::write(&not_pem, "hello").unwrap();
    let text = runner(
        "",
        &format!(
            "[runners.docker.isolation]\nregistry_ca_files = {{ \"Registry.Corp:5000\" = \"{}\" }}\n",
            ca.display()
        ),
    );
    let c = load_str(&text, "config.toml").unwrap().config;
    assert_eq!(
        c.runners[0]
            .docker
            .isolation
            .registry_ca_files
            .get("registry.corp:5000"),
        Some(&ca)
    );
    let text = runner(
        "",
        &format!(
            "[runners.docker.isolation]\nregistry_ca_files = {{ \"../../etc\" = \"{}\", \"r.corp\" = \"{}\", \"x.corp\" = \"relative.crt\" }}\n",
            ca.display(),
            not_pem.display()
        ),
    );
    let e = errors(&text);
    find(&e, "`../../etc` is not a registry host");
    find(&e, "holds no PEM certificate");
    assert!(e.len() >= 3, "{e:?}");
}

#[test]
fn unhealthy_keys_are_read_with_gitlab_runner_defaults() {
    let c = load_str(&runner("", ""), "config.toml").unwrap().config;
    assert_eq!(c.runners[0].unhealthy_requests_limit, 3);
    assert_eq!(c.runners[0].unhealthy_interval, Duration::from_secs(3600));
    let l = load_str(
        &runner(
            "unhealthy_requests_limit = 5\nunhealthy_interval = \"1h30m0s\"",
            "",
        ),
        "config.toml",
    )
    .unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(l.config.runners[0].unhealthy_requests_limit, 5);
    assert_eq!(
        l.config.runners[0].unhealthy_interval,
        Duration::from_secs(5400)
    );
    // gitlab-runner takes a limit below 1 as its default.
    let c = load_str(&runner("unhealthy_requests_limit = 0", ""), "config.toml")
        .unwrap()
        .config;
    assert_eq!(c.runners[0].unhealthy_requests_limit, 3);
    let e = errors(&runner("unhealthy_interval = 3600", ""));
    assert_eq!(find(&e, "unhealthy_interval").line, 7);
}

#[test]
fn token_times_are_read_as_toml_datetimes_or_strings() {
    let c = load_str(
        &runner(
            "token_obtained_at = 2025-01-01T00:00:00Z\ntoken_expires_at = \"2025-01-31T00:00:00.000Z\"",
            "",
        ),
        "config.toml",
    )
    .unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let r = &c.config.runners[0];
    let obtained = r.token_obtained_at.unwrap();
    assert_eq!(
        r.token_expires_at
            .unwrap()
            .duration_since(obtained)
            .unwrap(),
        Duration::from_secs(30 * 86400)
    );
    // Go's zero time, as gitlab-runner writes for a token that does not expire.
    let c = load_str(
        &runner("token_expires_at = 0001-01-01T00:00:00Z", ""),
        "config.toml",
    )
    .unwrap();
    assert_eq!(c.config.runners[0].token_expires_at, None);
    let w = warnings(&runner("token_expires_at = \"soon\"", ""));
    assert!(
        find(&w, "token_expires_at")
            .message
            .contains("not be rotated")
    );
}

#[test]
fn root_store_keys() {
    let text = runner(
        "",
        "[runners.docker.isolation]\nroot_store = \"off\"\nroot_store_size = \"2g\"\nroot_store_path = \"/srv/roots\"",
    );
    let c = load_str(&text, "config.toml").unwrap().config;
    let i = &c.runners[0].docker.isolation;
    assert_eq!(i.root_store, RootStore::Off);
    assert_eq!(i.root_store_size, 2 * 1024 * 1024 * 1024);
    assert_eq!(i.root_store_path, Some(PathBuf::from("/srv/roots")));
    let d = IsolationConfig::default();
    assert_eq!(d.root_store, RootStore::Auto);
    assert_eq!(d.root_store_size, DEFAULT_ROOT_STORE_SIZE);
    for (bad, says) in [
        ("root_store = \"maybe\"", "not a root store mode"),
        ("root_store_size = \"10m\"", "at least 1 GiB"),
        ("root_store_path = \"relative\"", "root_store_path"),
    ] {
        let text = runner("", &format!("[runners.docker.isolation]\n{bad}"));
        let e = load_str(&text, "config.toml").unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
