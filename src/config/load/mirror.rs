//! `[runners.docker.isolation.mirror]`: the managed registry mirror's keys.

use super::*;
use crate::config::mirror::ManagedMirror;

impl Loader {
    pub(super) fn mirror(&mut self, t: &dyn TableLike, header: usize) -> ManagedMirror {
        let s = &keys::MIRROR;
        let mut m = ManagedMirror::default();
        for (key, item) in t.iter() {
            let at = self.at(s, t, key, header);
            match key {
                "upstream" => {
                    if let Some(u) = self
                        .non_empty_string(&at, item)
                        .and_then(|u| self.check(&at, parse_upstream(&u)))
                    {
                        m.upstream = u;
                    }
                }
                "image" => {
                    if let Some(i) = self.non_empty_string(&at, item) {
                        m.image = i;
                    }
                }
                "storage_dir" => m.storage_dir = self.abs_path(&at, item),
                "max_size" => {
                    if let Some(n) = self.size(&at, item) {
                        if n == 0 {
                            self.error(&at, "must be more than zero");
                        } else {
                            m.max_size = n;
                        }
                    }
                }
                "port" => {
                    if let Some(p) = self.integer(&at, item, 0, 65535) {
                        m.port = p as u16;
                    }
                }
                _ => self.not_honoured(s, &at, key, item),
            }
        }
        m
    }
}

/// An upstream registry URL: http(s), a host, no credentials, no query. Credentials are refused
/// because a mirror that holds them serves what they unlock to every job on the host.
pub(super) fn parse_upstream(text: &str) -> Result<url::Url, String> {
    let url = v::parse_http_url(text)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{}` carries credentials: the managed mirror holds none, so it only ever caches \
             what the upstream serves anonymously (private images are pulled by each job's own \
             daemon with its own `docker login`)",
            redact(&url)
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{text}` must not have a query or fragment"));
    }
    Ok(url)
}

fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    // Both setters only fail on URLs that cannot have credentials, which an http(s) URL can.
    let _ = u.set_username("***");
    let _ = u.set_password(Some("***"));
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::parse_upstream;

    #[test]
    fn upstream_refuses_credentials_and_secrets_stay_out_of_the_message() {
        assert!(parse_upstream("https://registry-1.docker.io").is_ok());
        assert!(parse_upstream("http://10.0.0.5:5000/").is_ok());
        let e = parse_upstream("https://bob:hunter2@registry.example").unwrap_err();
        assert!(e.contains("credentials"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("bob"), "{e}");
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("https://x/?a=b").is_err());
    }
}
