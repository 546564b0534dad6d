//! Checks against GitLab: reachable, TLS, the runner token, the clock.

use super::*;

pub(super) fn gitlab_parts(
    f: &Facts,
    id: &'static str,
    each: impl Fn(&GitlabFact) -> Check,
) -> Check {
    if f.config.loaded().is_none() {
        return skip(id, "no loaded config", NO_CONFIG_HINT);
    }
    if f.gitlab.is_empty() {
        return skip(
            id,
            "no [[runners]] entry with a token",
            "register one with `runner register`",
        );
    }
    combine(id, f.gitlab.iter().map(each).collect())
}

pub(super) fn gitlab_reachable(f: &Facts) -> Check {
    const ID: &str = "gitlab.reachable";
    gitlab_parts(f, ID, |g| match &g.probe {
        Ok(p) => Check::ok(ID, format!("{} answered HTTP {}", g.url, p.status)),
        Err(ProbeError { tls, message }) => Check::with(
            ID,
            Status::Fail,
            format!("{} did not answer: {message}", g.url),
            if *tls {
                "the TLS handshake failed: see gitlab.tls".to_string()
            } else {
                format!(
                    "check DNS, proxy and firewall from this host to {} (`curl -sI {}`)",
                    g.url.host_str().unwrap_or("?"),
                    g.url
                )
            },
        ),
    })
}

pub(super) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

pub(super) fn gitlab_tls(f: &Facts) -> Check {
    const ID: &str = "gitlab.tls";
    gitlab_parts(f, ID, |g| {
        if g.url.scheme() != "https" {
            return if is_loopback(&g.url) {
                skip(
                    ID,
                    format!("{}: plain http to a loopback address", g.url),
                    "",
                )
            } else {
                Check::with(
                    ID,
                    Status::Warn,
                    format!(
                        "{}: plain http: the runner token and job secrets travel unencrypted",
                        g.url
                    ),
                    "use the https:// URL of GitLab in [[runners]] url",
                )
            };
        }
        match &g.probe {
            Ok(_) => Check::ok(ID, format!("{}: certificate valid", g.url)),
            Err(ProbeError { tls: true, message }) => Check::with(
                ID,
                Status::Fail,
                format!("{}: certificate not accepted: {message}", g.url),
                "renew or fix GitLab's certificate (expired, wrong name), or, for a private CA, \
                 set tls-ca-file = \"/etc/isolated-runner/gitlab-ca.pem\" in [[runners]]",
            ),
            Err(_) => skip(
                ID,
                format!("{}: not reached", g.url),
                "see gitlab.reachable",
            ),
        }
    })
}

pub(super) fn gitlab_token(f: &Facts) -> Check {
    const ID: &str = "gitlab.token";
    gitlab_parts(f, ID, |g| match &g.token {
        TokenFact::Valid => Check::ok(ID, format!("runner {}: token valid", g.runner)),
        TokenFact::Refused { status, .. } => Check::with(
            ID,
            Status::Fail,
            format!("runner {}: GitLab refused the token ({status})", g.runner),
            format!(
                "the runner was deleted or its token revoked or rotated: register again \
                 (`runner register`) or put the new token in the config; `runner verify \
                 --delete --name {}` removes the dead entry",
                g.runner
            ),
        ),
        TokenFact::Error(e) => Check::with(
            ID,
            Status::Warn,
            format!("runner {}: could not verify the token: {e}", g.runner),
            "retry later; `runner verify` shows the same call",
        ),
        TokenFact::NotTried(why) => skip(
            ID,
            format!("runner {}: {why}", g.runner),
            "see gitlab.reachable",
        ),
    })
}

pub(super) fn gitlab_clock_skew(f: &Facts) -> Check {
    const ID: &str = "gitlab.clock_skew";
    gitlab_parts(f, ID, |g| {
        let Ok(p) = &g.probe else {
            return skip(
                ID,
                format!("{}: not reached", g.url),
                "see gitlab.reachable",
            );
        };
        let Some(server) = p.server_date else {
            return skip(ID, format!("{}: no Date header", g.url), "");
        };
        let skew = match p.local_date.duration_since(server) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        let ahead = p.local_date >= server;
        let message = format!(
            "{}: this host's clock is {}s {} GitLab's",
            g.url,
            skew.as_secs(),
            if ahead { "ahead of" } else { "behind" }
        );
        let hint = "synchronise the clock (`timedatectl set-ntp true`, chrony or systemd-timesyncd): \
                    job certificates, tokens and cache URLs are time-limited";
        if skew > Duration::from_secs(300) {
            Check::with(ID, Status::Fail, message, hint)
        } else if skew > Duration::from_secs(30) {
            Check::with(ID, Status::Warn, message, hint)
        } else {
            Check::ok(ID, message)
        }
    })
}
