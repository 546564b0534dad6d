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

    #[test]
    fn the_table_loads_and_its_errors_name_key_and_line() {
        let doc = |iso: &str| {
            format!(
                "[[runners]]\nname = \"r\"\nurl = \"https://gitlab.example.com/\"\n\
                 token = \"glrt-x\"\n[runners.docker]\nimage = \"debian:12\"\n{iso}\n"
            )
        };
        let ok = crate::config::load_str(
            &doc("[runners.docker.isolation.mirror]\nmax_size = \"5g\"\nport = 5005"),
            "c.toml",
        )
        .expect("loads");
        let m = ok.config.runners[0]
            .docker
            .isolation
            .mirror
            .clone()
            .expect("mirror");
        assert_eq!(m.upstream.as_str(), "https://registry-1.docker.io/");
        assert_eq!((m.max_size, m.port), (5 * 1024 * 1024 * 1024, 5005));
        let bad = doc(
            "[runners.docker.isolation]\nregistry_mirror = \"http://m:5000\"\n\
             [runners.docker.isolation.mirror]\nupstream = \"https://u:hunter2@reg.example\"\nsize = 1",
        );
        let e = crate::config::load_str(&bad, "c.toml").expect_err("errors");
        let text = e.to_string();
        let diags = e.diagnostics();
        let at = |needle: &str| {
            diags
                .iter()
                .find(|d| d.to_string().contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in {text}"))
                .line
        };
        assert_eq!(at("not both"), 8);
        assert_eq!(at("credentials"), 10);
        assert_eq!(at("unknown key `size`"), 11);
        assert!(!text.contains("hunter2"), "{text}");
    }
}
