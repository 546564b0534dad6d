//! `docker.mirror`: the managed registry mirror is up and answering.

use super::*;
use crate::doctor::facts::{MirrorFact, MirrorState};

pub(super) fn mirror_up(f: &Facts) -> Check {
    const ID: &str = "docker.mirror";
    let Some(config) = f.config.loaded() else {
        return skip(ID, "no loaded config", NO_CONFIG_HINT);
    };
    let wants = config.runners.iter().any(|r| {
        r.docker.isolation.mirror.is_some() && r.docker.isolation.mode == IsolationMode::Dind
    });
    if !wants {
        // Nothing to run: not a problem, so not a skip either.
        return Check::ok(
            ID,
            "no managed mirror configured ([runners.docker.isolation.mirror])",
        );
    }
    if f.docker.is_err() {
        return skip(ID, "docker not reachable", "see docker.reachable");
    }
    combine(ID, f.mirrors.iter().map(one).collect())
}

fn one(m: &MirrorFact) -> Check {
    const ID: &str = "docker.mirror";
    let name = &m.container;
    match &m.state {
        MirrorState::Up(url) => Check::ok(
            ID,
            format!("{name} answers at {url} (upstream {})", m.upstream),
        ),
        MirrorState::Absent => Check::with(
            ID,
            Status::Warn,
            format!("{name} does not exist yet"),
            "`runner run` creates it at start; until then job daemons pull from the upstream \
             directly",
        ),
        MirrorState::Stopped => Check::with(
            ID,
            Status::Warn,
            format!("{name} is stopped"),
            "`runner run` starts it again at its next start; meanwhile job daemons fall back to \
             the upstream (`docker logs` on it says why it stopped)",
        ),
        MirrorState::NotAnswering(url) => Check::with(
            ID,
            Status::Fail,
            format!("{name} runs but does not answer GET /v2/ at {url}"),
            format!(
                "`docker logs {name}`; job daemons fall back to the upstream meanwhile; \
                 `docker rm -f {name}` and a runner restart recreate it"
            ),
        ),
        MirrorState::Unknown(e) => Check::with(
            ID,
            Status::Fail,
            format!("cannot look at the managed mirror: {e}"),
            "see docker.reachable and the [runners.docker.isolation.mirror] settings",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(state: MirrorState) -> MirrorFact {
        MirrorFact {
            container: "ir-mirror-x".into(),
            upstream: "https://registry-1.docker.io/".into(),
            state,
        }
    }

    #[test]
    fn states_map_to_statuses() {
        assert_eq!(
            one(&fact(MirrorState::Up("http://172.17.0.1:1".into()))).status,
            Status::Ok
        );
        assert_eq!(one(&fact(MirrorState::Absent)).status, Status::Warn);
        assert_eq!(one(&fact(MirrorState::Stopped)).status, Status::Warn);
        assert_eq!(
            one(&fact(MirrorState::NotAnswering(
                "http://172.17.0.1:1".into()
            )))
            .status,
            Status::Fail
        );
        assert_eq!(
            one(&fact(MirrorState::Unknown("x".into()))).status,
            Status::Fail
        );
    }
}
