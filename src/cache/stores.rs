//! The shared store's clients, one per `[[runners]]` entry, kept for the life of the cache hook
//! (the daemon's) and shared by that entry's jobs.
//!
//! Building a client parses the host's trust roots and starts an empty connection pool; made
//! per transfer (as before), every cache download and upload paid for both and opened new
//! connections. A kept client reuses its connections.
//!
//! **Credentials stay with their entry.** A client is handed out only to a caller whose entry,
//! store config (credentials included) and runner token are exactly those it was built from:
//! the token names the runner's objects (`runner/<short token>/…`) and the config holds the
//! keys, so a job of one entry can never use another entry's keys or read and write its
//! objects, even when two entries share a name and URL. A changed config or a rotated token
//! replaces the entry's client instead of reusing it. One client per entry: the map is bounded
//! by the config's entries.

use super::remote::{Remote, RemoteError};
use crate::config::CacheStoreConfig;
use crate::secret::Secret;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One entry's client and what it was built from.
struct Kept {
    store: CacheStoreConfig,
    token: Secret,
    remote: Arc<Remote>,
}

/// The shared store's clients by `[[runners]]` entry. Its `Debug` shows the entries only.
#[derive(Default)]
pub struct StoreClients {
    kept: Mutex<HashMap<String, Kept>>,
}

impl std::fmt::Debug for StoreClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries: Vec<String> = self
            .kept
            .lock()
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("StoreClients")
            .field("entries", &entries)
            .finish()
    }
}

impl StoreClients {
    /// The client of the entry named `entry` (its name and URL) for `store` and `token`: the
    /// kept one when it was built from exactly these, else a new one, which replaces it. A
    /// client that cannot be built is not kept (the next job tries again: a credentials file
    /// may have been fixed meanwhile).
    pub fn client(
        &self,
        entry: &str,
        store: &CacheStoreConfig,
        token: &Secret,
    ) -> Result<Arc<Remote>, RemoteError> {
        // Plain map work and a synchronous client build under the lock (no await); the map is
        // still valid if a holder panicked.
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = kept.get(entry)
            && k.store == *store
            && k.token == *token
        {
            return Ok(k.remote.clone());
        }
        let remote = Arc::new(Remote::new(store, token.expose())?);
        kept.insert(
            entry.to_string(),
            Kept {
                store: store.clone(),
                token: token.clone(),
                remote: remote.clone(),
            },
        );
        Ok(remote)
    }

    /// How many clients are kept.
    pub fn len(&self) -> usize {
        self.kept.lock().map(|k| k.len()).unwrap_or_default()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheStoreType;

    fn store(access: &str, secret: &str) -> CacheStoreConfig {
        let mut c = CacheStoreConfig::new(CacheStoreType::S3);
        c.s3.bucket_name = "b".into();
        c.s3.server_address = "127.0.0.1:9".into();
        c.s3.insecure = true;
        c.s3.access_key = Some(Secret::new(access));
        c.s3.secret_key = Some(Secret::new(secret));
        c
    }

    #[test]
    fn one_client_per_entry_shared_by_its_jobs() {
        let clients = StoreClients::default();
        let (s, t) = (store("AKIDA", "secret-a"), Secret::new("glrt-aaaaaaaaaaaa"));
        let first = clients.client("a\nhttp://gl/", &s, &t).expect("client");
        for _ in 0..20 {
            let again = clients.client("a\nhttp://gl/", &s, &t).expect("client");
            assert!(
                Arc::ptr_eq(&first, &again),
                "a job of the entry reuses its client"
            );
        }
        assert_eq!(clients.len(), 1);
    }

    #[test]
    fn another_entrys_credentials_or_token_never_share_a_client() {
        let clients = StoreClients::default();
        let t = Secret::new("glrt-aaaaaaaaaaaa");
        let a = clients
            .client("a\nhttp://gl/", &store("AKIDA", "secret-a"), &t)
            .expect("client");
        // Another entry with other keys gets its own client.
        let b = clients
            .client("b\nhttp://gl/", &store("AKIDB", "secret-b"), &t)
            .expect("client");
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(b.scrub("secret-b secret-a"), "[MASKED] secret-a");
        // Same name and URL (a config with a duplicated entry), other secret: not a's client.
        let a2 = clients
            .client("a\nhttp://gl/", &store("AKIDA", "secret-other"), &t)
            .expect("client");
        assert!(!Arc::ptr_eq(&a, &a2));
        assert_eq!(a2.scrub("secret-other"), "[MASKED]");
        // A rotated runner token names other objects: a new client with the new namespace.
        let rotated = Secret::new("glrt-bbbbbbbbbbbb");
        let a3 = clients
            .client("a\nhttp://gl/", &store("AKIDA", "secret-other"), &rotated)
            .expect("client");
        assert!(!Arc::ptr_eq(&a2, &a3));
        assert_eq!(
            a3.object_name(1, "k").as_deref(),
            Some("runner/bbbbbbbbb/project/1/k")
        );
        // Replaced, not added: bounded by the entries.
        assert_eq!(clients.len(), 2);
    }

    #[test]
    fn debug_shows_no_credentials() {
        let clients = StoreClients::default();
        let t = Secret::new("glrt-aaaaaaaaaaaa");
        let r = clients
            .client("a\nhttp://gl/", &store("AKIDA", "secret-a"), &t)
            .expect("client");
        let text = format!("{clients:?} {r:?}");
        assert!(
            !text.contains("secret-a") && !text.contains("AKIDA"),
            "{text}"
        );
    }
}
