//! The managed registry mirror as it stands now (read only: nothing is started or created).

use crate::config::Config;
use crate::docker::Docker;
use crate::isolation::mirror;

/// One managed mirror the config asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorFact {
    /// Its container's name.
    pub container: String,
    /// Its upstream.
    pub upstream: String,
    /// How it stands.
    pub state: MirrorState,
}

/// How a managed mirror stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorState {
    /// Running and answering `GET /v2/` at this URL.
    Up(String),
    /// Running, published at this URL, but not answering.
    NotAnswering(String),
    /// The container exists and is stopped.
    Stopped,
    /// No container: `runner run` creates it at its next start.
    Absent,
    /// It could not be looked at.
    Unknown(String),
}

/// Every managed mirror of `config` on `docker`.
pub(super) async fn gather_mirrors(docker: &Docker, config: &Config) -> Vec<MirrorFact> {
    let wanted = match mirror::wanted(config) {
        Ok(w) => w,
        Err(e) => {
            return vec![MirrorFact {
                container: "-".into(),
                upstream: "-".into(),
                state: MirrorState::Unknown(e.to_string()),
            }];
        }
    };
    let mut out = Vec::new();
    for w in wanted {
        let state = match mirror::status(docker, &w).await {
            Ok(None) => MirrorState::Absent,
            Ok(Some((_, false))) if !docker_running(docker, &w).await => MirrorState::Stopped,
            Ok(Some((run, false))) => MirrorState::NotAnswering(run.url),
            Ok(Some((run, true))) => MirrorState::Up(run.url),
            Err(e) => MirrorState::Unknown(e.to_string()),
        };
        out.push(MirrorFact {
            container: w.container_name(),
            upstream: w.mirror.upstream.to_string(),
            state,
        });
    }
    out
}

async fn docker_running(docker: &Docker, w: &mirror::Wanted) -> bool {
    docker
        .inspect_container(&w.container_name())
        .await
        .is_ok_and(|c| c.running)
}
