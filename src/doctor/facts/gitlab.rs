//! Facts from GitLab: reachable, TLS, whether the runner token verifies, the clock skew.

use super::*;

/// The system id `runner run` would use, without writing it: the persisted one, else the one
/// derived from the machine id (what `run` would write), else a throwaway.
pub async fn system_id_readonly(state_dir: &Path) -> String {
    use crate::gitlab::identity;
    if let Ok(s) = tokio::fs::read_to_string(state_dir.join(identity::SYSTEM_ID_FILE)).await
        && identity::is_valid_system_id(s.trim())
    {
        return s.trim().to_string();
    }
    for p in identity::MACHINE_ID_PATHS {
        if let Ok(m) = tokio::fs::read_to_string(p).await
            && !m.trim().is_empty()
        {
            return identity::system_id_from_machine_id(&m);
        }
    }
    "r_doctor000000".to_string()
}

pub(super) async fn gather_gitlab(config: &Config, timeout: Duration) -> Vec<GitlabFact> {
    let system_id = system_id_readonly(&config.state_dir).await;
    let mut out = Vec::new();
    // Entries without a token serve `runner exec` only and never talk to GitLab.
    for r in config
        .runners
        .iter()
        .filter(|r| !r.token.expose().is_empty())
    {
        let probe = probe(&r.url, r.tls_ca_file.as_deref(), timeout).await;
        let token = if probe.is_err() {
            TokenFact::NotTried("gitlab did not answer".to_string())
        } else {
            verify(r, &system_id, timeout).await
        };
        out.push(GitlabFact {
            runner: r.name.clone(),
            url: r.url.clone(),
            probe,
            token,
        });
    }
    out
}

pub(super) async fn verify(
    r: &crate::config::RunnerConfig,
    system_id: &str,
    timeout: Duration,
) -> TokenFact {
    use crate::gitlab::client::{Client, ClientOptions, RetryPolicy};
    let options = ClientOptions {
        request_timeout: timeout,
        connect_timeout: timeout,
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        tls_ca_file: r.tls_ca_file.clone(),
        ..ClientOptions::default()
    };
    let client = match Client::new(&r.url, options) {
        Ok(c) => c,
        Err(e) => return TokenFact::Error(e.to_string()),
    };
    let info = crate::gitlab::identity::runner_info();
    match client.verify(&r.token, system_id, &info).await {
        Ok(_) => TokenFact::Valid,
        Err(e) => match e.status() {
            Some(s @ (401 | 403 | 422)) => TokenFact::Refused {
                status: s,
                message: e.to_string(),
            },
            _ => TokenFact::Error(e.to_string()),
        },
    }
}

/// A plain `GET` of the GitLab URL: any HTTP answer means reachable; its `Date` header gives
/// the clock skew. Redirects are not followed.
pub(super) async fn probe(
    url: &url::Url,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<Probe, ProbeError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(crate::gitlab::client::default_user_agent());
    if let Some(ca) = ca_file {
        let pem = tokio::fs::read(ca).await.map_err(|e| ProbeError {
            tls: true,
            message: format!("cannot read tls-ca-file {}: {e}", ca.display()),
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ProbeError {
            tls: true,
            message: format!(
                "tls-ca-file {} holds no usable certificate: {e}",
                ca.display()
            ),
        })?;
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    let client = builder.build().map_err(|e| ProbeError {
        tls: false,
        message: e.to_string(),
    })?;
    match client.get(url.clone()).send().await {
        Ok(resp) => {
            let local_date = SystemTime::now();
            let server_date = resp
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|d| d.to_str().ok())
                .and_then(|d| httpdate::parse_http_date(d).ok());
            Ok(Probe {
                status: resp.status().as_u16(),
                server_date,
                local_date,
            })
        }
        Err(e) => {
            let chain = error_chain(&e);
            let lower = chain.to_lowercase();
            let tls = url.scheme() == "https"
                && (lower.contains("certificate")
                    || lower.contains("tls")
                    || lower.contains("handshake")
                    || lower.contains("invalid peer"));
            Err(ProbeError {
                tls,
                message: chain,
            })
        }
    }
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}
