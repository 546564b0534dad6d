//! `registry_pull`: jobs whose images exist only in a registry, pulled by the runner onto the
//! host engine the way gitlab-runner's docker executor pulls, end to end through the real
//! daemon and the fake GitLab.
//!
//! The registry is `isolated-runner/registry:test` (`support::registry`), started by each test,
//! published on loopback and the default bridge's gateway only: the host engine talks plain
//! HTTP to loopback registries, and nothing leaves the machine. Test images are pushed into it
//! from the host engine under a repository named after the test's runner id, the local tag is
//! removed, so only a pull can bring the image back; every tag pulled is removed at the end.
//! TLS with a private CA is tested on the job's own daemon (`registry_ca_files`) and on the host
//! engine (a `/etc/docker/certs.d/<address:port>` directory for the test's own registry only,
//! removed when the test ends).

use crate::support;

use serde_json::json;
use std::time::Duration;
use support::docker::BUSYBOX_IMAGE;
use support::e2e::{E2e, JOB_TIMEOUT, push_var};
use support::registry::{Registry, Setup, local, repo_prefix};

fn image(name: &str, policy: &[&str]) -> serde_json::Value {
    json!({"name": name, "entrypoint": null, "ports": [], "pull_policy": policy})
}

fn assert_failed(w: &E2e, id: u64, state: &support::fake_gitlab::FinalUpdate, reason: &str) {
    // The fake lists what current GitLab knows (`features.failure_reasons`), which has no
    // `image_pull_failure`: the runner names it in the trace and sends GitLab its fallback,
    // `runner_system_failure` (gitlab-runner-protocol.md section 7.3).
    let sent = match reason {
        "image_pull_failure" => "runner_system_failure",
        other => other,
    };
    let trace = w.trace(id);
    assert_eq!(
        (state.state.as_str(), state.failure_reason.as_deref()),
        ("failed", Some(sent)),
        "job {id}:\n{trace}"
    );
    assert!(
        trace.contains(&format!("Job failed: {reason}")),
        "job {id} does not name its failure:\n{trace}"
    );
}

/// Anonymous registry: the job image and a service image come only from the registry; the
/// trace shows the pull and the digest; `never` with a missing image, a missing tag and a
/// registry that is down (tried again first) fail as `image_pull_failure` with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_and_service_images_are_pulled_and_missing_ones_fail_clearly() {
    let w = E2e::new().await;
    let mut reg = Registry::start(&w.scope, Setup::default()).await;
    let repo = repo_prefix(&w.scope);
    let job_img = reg.push(BUSYBOX_IMAGE, &format!("{repo}/bb:1")).await;
    let svc_img = reg.push(BUSYBOX_IMAGE, &format!("{repo}/svc:1")).await;
    assert!(
        !local(&job_img).await,
        "the test image must exist only in the registry"
    );

    let mut ok = w.job(2001, &["echo pulled-image-runs"], &[]);
    ok["image"] = image(&job_img, &[]);
    ok["services"] = json!([{"name": svc_img, "command": ["sleep", "600"], "alias": "svc",
                             "entrypoint": null, "ports": [], "pull_policy": ["always"]}]);
    let mut never = w.job(2002, &["echo not-reached"], &[]);
    never["image"] = image(&format!("{}/{repo}/absent:1", reg.loopback), &["never"]);
    let mut absent = w.job(2003, &["echo not-reached"], &[]);
    absent["image"] = image(&format!("{}/{repo}/absent:1", reg.loopback), &[]);
    // A registry that is not there (a loopback port nobody listens on): connection refused is
    // transient, so the pull is tried again before the job fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut down = w.job(2004, &["echo not-reached"], &[]);
    down["image"] = image(&format!("{closed}/{repo}/bb:1"), &[]);
    for j in [ok, never, absent, down] {
        w.fake.enqueue(j);
    }
    let mut config = w.config(1);
    let d = &mut config.runners[0].docker;
    d.allowed_pull_policies = ["always", "if-not-present", "never"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let daemon = w.start_daemon(config);
    let f1 = w.wait_final(2001, JOB_TIMEOUT).await;
    let f2 = w.wait_final(2002, JOB_TIMEOUT).await;
    let f3 = w.wait_final(2003, JOB_TIMEOUT).await;
    let f4 = w.wait_final(2004, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;

    let t = w.trace(2001);
    assert_eq!(f1.state, "success", "{t}");
    assert!(t.contains("pulled-image-runs\n"), "{t}");
    assert!(
        t.contains(&format!("Pulling docker image {job_img} ...")),
        "{t}"
    );
    assert!(
        t.contains(&format!("Pulling docker image {svc_img} ...")),
        "{t}"
    );
    let digest = format!(
        "for {job_img} with digest {}/{repo}/bb@sha256:",
        reg.loopback
    );
    assert!(t.contains(&digest), "missing {digest:?}:\n{t}");
    assert!(local(&job_img).await && local(&svc_img).await);

    assert_failed(&w, 2002, &f2, "image_pull_failure");
    let t = w.trace(2002);
    assert!(t.contains("the pull policy is \"never\""), "{t}");
    assert!(!t.contains("not-reached"), "{t}");

    assert_failed(&w, 2003, &f3, "image_pull_failure");
    let t = w.trace(2003);
    // The registry's own words reach the trace.
    assert!(
        t.contains("manifest unknown") || t.contains("not found"),
        "no registry message:\n{t}"
    );

    assert_failed(&w, 2004, &f4, "image_pull_failure");
    let t = w.trace(2004);
    assert!(t.contains("(attempt 2 of 3)"), "{t}");
    assert!(t.contains("(attempt 3 of 3)"), "{t}");
    assert!(t.contains("connection refused"), "{t}");
    reg.stop().await;
    w.scope.assert_clean().await;
}

/// Registry behind basic auth: the payload's `credentials` and `DOCKER_AUTH_CONFIG` (job
/// variable, then the config's `environment`) pull; no credential reaches the trace; a wrong
/// password fails with the registry's message. The attack: project B, without credentials,
/// asks under `if-not-present` for the private image project A just pulled; B must not get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_pulls_and_no_reuse_without_access() {
    let w = E2e::new().await;
    let password = format!("pw-{}", w.scope.runner_id);
    let mut reg = Registry::start(&w.scope, Setup::user("puller", &password)).await;
    let repo = repo_prefix(&w.scope);
    let img = reg.push(BUSYBOX_IMAGE, &format!("{repo}/private:1")).await;
    let creds = |pw: &str| json!([{"type": "registry", "url": reg.loopback, "username": "puller", "password": pw}]);
    let auth_config =
        json!({"auths": {reg.loopback.clone(): {"auth": base64_of(&format!("puller:{password}"))}}})
            .to_string();

    // Phase 1: payload credentials, then B without credentials (image now local).
    let mut a = w.job(2101, &["echo project-a-ran"], &[]);
    a["image"] = image(&img, &[]);
    a["credentials"] = creds(&password);
    let mut b = w.job(2102, &["echo project-b-got-it"], &[]);
    b["image"] = image(&img, &["if-not-present"]);
    w.fake.enqueue(a);
    w.fake.enqueue(b);
    let daemon = w.start_daemon(w.config(1));
    let fa = w.wait_final(2101, JOB_TIMEOUT).await;
    let fb = w.wait_final(2102, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;
    let t = w.trace(2101);
    assert_eq!(fa.state, "success", "{t}");
    assert!(
        t.contains("Authenticating with credentials from job payload (GitLab Registry)"),
        "{t}"
    );
    assert!(t.contains(&format!("for {img} with digest")), "{t}");
    assert!(local(&img).await);
    assert_failed(&w, 2102, &fb, "image_pull_failure");
    let t = w.trace(2102);
    assert!(!t.contains("project-b-got-it"), "{t}");
    assert!(t.contains("\"if-not-present\" acts as \"always\""), "{t}");
    assert!(
        t.contains("no basic auth credentials") || t.contains("unauthorized"),
        "no registry refusal:\n{t}"
    );

    // Phase 2: DOCKER_AUTH_CONFIG as a job variable (not masked: the runner must not print
    // it anyway), and a wrong password.
    reg.untag(&img).await;
    let mut c = w.job(2103, &["echo var-config-ran"], &[]);
    c["image"] = image(&img, &[]);
    push_var(&mut c, "DOCKER_AUTH_CONFIG", &auth_config, false);
    let mut d = w.job(2104, &["echo not-reached"], &[]);
    d["image"] = image(&format!("{}/{repo}/private:1", reg.loopback), &["always"]);
    d["credentials"] = creds("wrong-password-xyz");
    w.fake.enqueue(c);
    w.fake.enqueue(d);
    let mut config = w.config(1);
    config.runners[0].docker.allowed_pull_policies =
        vec!["always".to_string(), "if-not-present".to_string()];
    let daemon = w.start_daemon(config);
    let fc = w.wait_final(2103, JOB_TIMEOUT).await;
    let fd = w.wait_final(2104, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;
    let t = w.trace(2103);
    assert_eq!(fc.state, "success", "{t}");
    assert!(
        t.contains("Authenticating with credentials from $DOCKER_AUTH_CONFIG"),
        "{t}"
    );
    assert_failed(&w, 2104, &fd, "image_pull_failure");
    let t = w.trace(2104);
    assert!(t.contains("unauthorized"), "no registry message:\n{t}");
    assert!(!t.contains("not-reached\n"), "{t}");

    // Phase 3: DOCKER_AUTH_CONFIG in the config's `environment`.
    reg.untag(&img).await;
    let mut e = w.job(2105, &["echo env-config-ran"], &[]);
    e["image"] = image(&img, &[]);
    w.fake.enqueue(e);
    let mut config = w.config(1);
    config.runners[0]
        .environment
        .push(("DOCKER_AUTH_CONFIG".to_string(), auth_config.clone()));
    let daemon = w.start_daemon(config);
    let fe = w.wait_final(2105, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;
    let t = w.trace(2105);
    assert_eq!(fe.state, "success", "{t}");
    assert!(t.contains("env-config-ran\n"), "{t}");

    for id in 2101..=2105 {
        let t = w.trace(id);
        for secret in [password.as_str(), "wrong-password-xyz"] {
            assert!(!t.contains(secret), "job {id} trace has a credential:\n{t}");
        }
        assert!(
            !t.contains(&base64_of(&format!("puller:{password}"))),
            "{t}"
        );
    }
    reg.stop().await;
    w.scope.assert_clean().await;
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A registry serving TLS with a certificate of a private CA (for the default bridge's gateway
/// and loopback), holding busybox as `<repo prefix>/<name>`. Returns the registry, the image's
/// name on the gateway address (where the engine verifies the certificate: loopback registries
/// are insecure by default) and the CA's PEM, which nothing trusts until the test puts it
/// somewhere.
async fn tls_registry_on_gateway(w: &E2e, name: &str) -> (Registry, String, String) {
    let gw = support::registry::bridge_gateway(&w.scope).await;
    let pki = isolated_runner::pki::issue_job_pki(&isolated_runner::pki::PkiRequest {
        job_id: 1,
        server_dns: Vec::new(),
        server_ips: vec![gw, "127.0.0.1".parse().expect("ip")],
        validity: Duration::from_secs(3600),
    })
    .expect("certificates");
    let s = &pki.server;
    let setup = Setup {
        tls: Some((&s.cert_pem, s.key_pem.expose())),
        ..Setup::default()
    };
    let mut reg = Registry::start(&w.scope, setup).await;
    let repo = format!("{}/{name}", repo_prefix(&w.scope));
    reg.push(BUSYBOX_IMAGE, &repo).await;
    let img = format!("{}/{repo}", reg.for_jobs);
    (reg, img, s.ca_pem.clone())
}

/// `registry_ca_files`: a registry with a private CA, reached by the job's own daemon. With the
/// admin's CA the job's `docker pull` works; without it, the daemon refuses the certificate.
/// The registry is published on the host's docker0 address and named as `registry_mirror`,
/// the one host address the job network may reach besides GitLab (egress rules), which also
/// keeps the inner daemon's Docker Hub pulls (none here) on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_daemon_trusts_the_admins_registry_ca() {
    let w = E2e::new().await;
    let (reg, img, ca_pem) = tls_registry_on_gateway(&w, "bb:1").await;
    let host = reg.for_jobs.clone();
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca = ca_dir.path().join("corp-ca.crt");
    std::fs::write(&ca, &ca_pem).expect("write CA");

    let pull = format!("docker pull {img} 2>&1 && echo inner-pull-ok || echo inner-pull-refused");
    let mut config = w.config(1);
    let iso = &mut config.runners[0].docker.isolation;
    iso.registry_mirror = Some(format!("https://{host}/"));
    iso.registry_ca_files.insert(host.clone(), ca.clone());
    w.fake.enqueue(w.job(2201, &[&pull], &[]));
    let daemon = w.start_daemon(config);
    let f = w.wait_final(2201, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;
    let t = w.trace(2201);
    assert_eq!(f.state, "success", "{t}");
    assert!(t.contains("inner-pull-ok\n"), "{t}");

    // The same without the CA: refused on the certificate, so the CA above was what worked.
    let mut config = w.config(1);
    config.runners[0].docker.isolation.registry_mirror = Some(format!("https://{host}/"));
    w.fake.enqueue(w.job(2202, &[&pull], &[]));
    let daemon = w.start_daemon(config);
    let f = w.wait_final(2202, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;
    let t = w.trace(2202);
    assert_eq!(f.state, "success", "{t}");
    assert!(t.contains("inner-pull-refused\n"), "{t}");
    assert!(
        t.contains("x509") || t.contains("certificate"),
        "refused for another reason:\n{t}"
    );
    reg.stop().await;
    w.scope.assert_clean().await;
}

/// A `docker-credential-<name>` program on the runner's `PATH` for one test, removed on drop.
/// It answers `secret` for `server` and "not found" otherwise, and logs every server it is
/// asked for, so a test can tell whether the runner ran it.
struct CredHelper {
    name: String,
    program: std::path::PathBuf,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl CredHelper {
    fn install(runner_id: &str, server: &str, user: &str, secret: &str) -> CredHelper {
        use std::os::unix::fs::PermissionsExt;
        let name = format!("ir-test-{}", runner_id.to_ascii_lowercase());
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("asked");
        // /usr/local/bin is on the test process's PATH, which the in-process runner inherits.
        let program = std::path::PathBuf::from(format!("/usr/local/bin/docker-credential-{name}"));
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\n\
             echo \"$server\" >> '{log}'\n\
             if [ \"$server\" = '{server}' ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{secret}\"}}' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
            log = log.display()
        );
        std::fs::write(&program, script).expect("write helper");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        CredHelper {
            name,
            program,
            log,
            _dir: dir,
        }
    }

    fn asked(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CredHelper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.program);
    }
}

/// Credential helpers like gitlab-runner's: `credHelpers` in the admin's `DOCKER_AUTH_CONFIG`
/// (the config's `environment`) runs `docker-credential-<name> get` and the pull uses its
/// answer. The attack: a job's own `DOCKER_AUTH_CONFIG` naming the same helper must not make
/// the runner run it (a job never chooses what the root runner executes or which host keychain
/// it reads): the helper is not asked, the pull is refused by the registry, and the trace says
/// why. No secret reaches a trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_helpers_of_the_admin_run_and_a_jobs_do_not() {
    let w = E2e::new().await;
    let password = format!("helper-pw-{}", w.scope.runner_id);
    let mut reg = Registry::start(&w.scope, Setup::user("puller", &password)).await;
    let repo = repo_prefix(&w.scope);
    let img = reg.push(BUSYBOX_IMAGE, &format!("{repo}/helped:1")).await;
    let helper = CredHelper::install(&w.scope.runner_id, &reg.loopback, "puller", &password);
    let config_json =
        json!({"credHelpers": {reg.loopback.clone(): helper.name.clone()}}).to_string();

    // The admin's config: the helper is asked for this registry and its answer pulls.
    let mut a = w.job(2201, &["echo helper-pull-ran"], &[]);
    a["image"] = image(&img, &[]);
    w.fake.enqueue(a);
    let mut config = w.config(1);
    config.runners[0]
        .environment
        .push(("DOCKER_AUTH_CONFIG".to_string(), config_json.clone()));
    let daemon = w.start_daemon(config);
    let fa = w.wait_final(2201, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;
    let t = w.trace(2201);
    assert_eq!(fa.state, "success", "{t}");
    assert!(t.contains("helper-pull-ran\n"), "{t}");
    assert!(
        t.contains(&format!("docker-credential-{}", helper.name)),
        "the trace does not say where the credentials came from:\n{t}"
    );
    assert_eq!(helper.asked().trim(), reg.loopback, "helper log");

    // The job's own config naming the helper: not run, the registry refuses.
    reg.untag(&img).await;
    let mut b = w.job(2202, &["echo job-helper-ran"], &[]);
    b["image"] = image(&img, &[]);
    push_var(&mut b, "DOCKER_AUTH_CONFIG", &config_json, false);
    w.fake.enqueue(b);
    let daemon = w.start_daemon(w.config(1));
    let fb = w.wait_final(2202, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;
    assert_failed(&w, 2202, &fb, "image_pull_failure");
    let t = w.trace(2202);
    assert!(!t.contains("job-helper-ran\n"), "{t}");
    assert!(
        t.contains("is not run for a job's own config"),
        "no reason given:\n{t}"
    );
    assert_eq!(
        helper.asked().lines().count(),
        1,
        "the runner ran a helper a job named: {}",
        helper.asked()
    );
    for id in [2201, 2202] {
        assert!(
            !w.trace(id).contains(&password),
            "job {id} trace has the secret"
        );
    }
    reg.stop().await;
    drop(helper);
    w.scope.assert_clean().await;
}

/// The admin's CA for a registry in `/etc/docker/certs.d/<host:port>/` for one test, removed
/// on drop (a directory of this test's own registry address only).
struct HostCertsD(std::path::PathBuf);

impl Drop for HostCertsD {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The job image in a registry with a private CA, pulled by the host engine as gitlab-runner's
/// docker executor pulls it: without the CA the pull fails with `image_pull_failure` and the
/// engine's certificate error in the trace; with the CA where Docker reads it for that
/// registry (`/etc/docker/certs.d/<host:port>/ca.crt`, the admin's step, as for
/// gitlab-runner) the same job runs. The registry is published on a non-loopback address, so
/// the engine verifies its certificate (loopback registries are insecure by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_image_over_tls_with_a_private_ca_on_the_host_engine() {
    let w = E2e::new().await;
    let (reg, img, ca_pem) = tls_registry_on_gateway(&w, "tls:1").await;

    // No CA: the engine refuses the certificate.
    let mut a = w.job(2301, &["echo tls-without-ca-ran"], &[]);
    a["image"] = image(&img, &[]);
    w.fake.enqueue(a);
    let daemon = w.start_daemon(w.config(1));
    let fa = w.wait_final(2301, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;
    assert_failed(&w, 2301, &fa, "image_pull_failure");
    let t = w.trace(2301);
    assert!(!t.contains("tls-without-ca-ran\n"), "{t}");
    assert!(
        t.contains("x509") || t.contains("certificate"),
        "refused for another reason:\n{t}"
    );
    assert!(!local(&img).await);

    // The admin's CA for this registry: pulled and run.
    let dir = std::path::PathBuf::from(format!("/etc/docker/certs.d/{}", reg.for_jobs));
    std::fs::create_dir_all(&dir).expect("certs.d dir");
    let certs_d = HostCertsD(dir);
    std::fs::write(certs_d.0.join("ca.crt"), &ca_pem).expect("write CA");
    let mut b = w.job(2302, &["echo tls-with-ca-ran"], &[]);
    b["image"] = image(&img, &[]);
    w.fake.enqueue(b);
    let daemon = w.start_daemon(w.config(1));
    let fb = w.wait_final(2302, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;
    let t = w.trace(2302);
    assert_eq!(fb.state, "success", "{t}");
    assert!(t.contains("tls-with-ca-ran\n"), "{t}");
    assert!(t.contains(&format!("for {img} with digest")), "{t}");
    assert!(local(&img).await);
    reg.untag(&img).await;
    drop(certs_d);
    reg.stop().await;
    w.scope.assert_clean().await;
}
