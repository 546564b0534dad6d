//! `--deep`: boots a real sidecar per profile and says what started.

use super::*;

/// Starts one throwaway job environment per profile through the real dind backend, timing
/// each until its daemon answers over mTLS, then tears it down.
pub(super) async fn gather_deep(docker: &Docker, config: Option<&Config>) -> Vec<DeepResult> {
    let base = config
        .and_then(|c| c.runners.first().cloned())
        .unwrap_or_default();
    let mut out = Vec::new();
    for profile in [
        SidecarProfile::Rootless,
        SidecarProfile::Hardened,
        SidecarProfile::Sysbox,
        SidecarProfile::Privileged,
    ] {
        let result = deep_one(docker, &base, profile).await;
        out.push(DeepResult { profile, result });
    }
    out
}

pub(super) async fn deep_one(
    docker: &Docker,
    base: &crate::config::RunnerConfig,
    profile: SidecarProfile,
) -> Result<Duration, String> {
    use crate::isolation::{ContainerImage, EnvironmentSpec, Isolation, OutputSink};
    struct Discard;
    impl OutputSink for Discard {
        fn write(&self, _data: &[u8]) {}
    }
    // Private directories: the probe must not touch the real builds or state directories.
    let tmp = tempfile_dir().await?;
    let mut runner = base.clone();
    runner.builds_dir = tmp.join("builds");
    runner.docker.isolation.mode = IsolationMode::Dind;
    runner.docker.isolation.sidecar_profile = profile;
    // One probe job: a sidecar pre-started for a next job would outlive the probe.
    runner.docker.isolation.warm_pool = 0;
    runner.docker.isolation.warm_pool_auto = false;
    let backend = crate::isolation::dind::DindBackend::new(
        docker.clone(),
        Arc::new(runner.clone()),
        tmp.join("state"),
    );
    let id = uuid::Uuid::new_v4().simple().to_string();
    let spec = EnvironmentSpec {
        runner_id: format!("doctor-{}", &id[..8]),
        // A job id no GitLab hands out soon, unique per run.
        job_id: 9_000_000_000
            + u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 1000
            + std::process::id() as u64 % 1000,
        project_id: 0,
        protected: false,
        timeout: Duration::from_secs(600),
        build_image: ContainerImage {
            name: runner.docker.image.clone(),
            entrypoint: None,
        },
        helper_image: runner
            .docker
            .helper_image
            .clone()
            .unwrap_or_else(|| crate::job::spec::DEFAULT_HELPER_IMAGE.to_string()),
        services: Vec::new(),
        service_env: Vec::new(),
        repo_endpoint: None,
        clone_path: None,
    };
    let started = tokio::time::Instant::now();
    let result = backend
        .prepare(
            &spec,
            Arc::new(Discard),
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
    let outcome = match result {
        Ok(env) => {
            let took = started.elapsed();
            let report = env.teardown().await;
            if report.failures.is_empty() {
                Ok(took)
            } else {
                Err(format!(
                    "ready in {took:.1?}, but teardown failed: {}",
                    report.failures.join("; ")
                ))
            }
        }
        Err(e) => Err(e.to_string()),
    };
    let _ = crate::paths::remove_path_async(&tmp).await;
    outcome
}

pub(super) async fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("runner-doctor-{}", uuid::Uuid::new_v4().simple()));
    tokio::fs::create_dir(&dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}
