//! A stand-in Docker engine on a unix socket, for unit tests of code that must behave when
//! its caller is cancelled half-way through a request. It answers the few endpoints those
//! tests need with minimal bodies, records every request (`"POST /volumes/create"`, without
//! the API version prefix and the query), and can hold a request until the test lets it go:
//! like the real engine, it then finishes the request whether or not anyone still listens.

use super::Docker;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore};

/// One held request: the test learns when it arrived and decides when it is answered.
#[derive(Clone)]
pub(crate) struct Gate {
    arrived: Arc<Semaphore>,
    open: Arc<Semaphore>,
}

impl Gate {
    /// Waits until the held request has reached the engine (panics after 10 s).
    pub(crate) async fn arrived(&self) {
        let permit = tokio::time::timeout(Duration::from_secs(10), self.arrived.acquire())
            .await
            .expect("the held request never arrived")
            .expect("gate closed");
        permit.forget();
    }

    /// Lets the held request be answered.
    pub(crate) fn open(&self) {
        self.open.add_permits(1);
    }
}

#[derive(Default)]
struct Shared {
    log: Mutex<Vec<String>>,
    holds: Mutex<Vec<(String, Gate)>>,
    changed: Notify,
    ids: std::sync::atomic::AtomicU32,
}

/// The fake engine; it stops when dropped.
pub(crate) struct FakeEngine {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeEngine {
    /// Starts the engine on a socket in a private temp dir.
    pub(crate) fn start() -> FakeEngine {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake engine's socket");
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, Arc::clone(&s)));
            }
        });
        FakeEngine {
            _dir: dir,
            socket,
            shared,
            task,
        }
    }

    /// A client of this engine (the version negotiation is its first request).
    pub(crate) async fn client(&self) -> Docker {
        Docker::connect(Some(&format!("unix://{}", self.socket.display())))
            .await
            .expect("connect to the fake engine")
    }

    /// Holds the next request whose `"METHOD /path"` starts with `prefix`.
    pub(crate) fn hold(&self, prefix: &str) -> Gate {
        let gate = Gate {
            arrived: Arc::new(Semaphore::new(0)),
            open: Arc::new(Semaphore::new(0)),
        };
        self.shared
            .holds
            .lock()
            .expect("holds")
            .push((prefix.to_string(), gate.clone()));
        gate
    }

    /// Every request so far, in order.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.shared.log.lock().expect("log").clone()
    }

    /// Waits until a request starting with `prefix` was received (panics after `timeout`).
    pub(crate) async fn wait_for(&self, prefix: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            if self.requests().iter().any(|r| r.starts_with(prefix)) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("no {prefix:?} request; got {:?}", self.requests());
            }
        }
    }
}

/// Serves one connection: HTTP/1.1 requests with `Content-Length` bodies, kept alive.
async fn serve(conn: UnixStream, shared: Arc<Shared>) {
    let (read, mut write) = conn.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        match read.read_line(&mut request_line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            match read.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if read.read_exact(&mut body).await.is_err() {
            return;
        }
        let mut words = request_line.split_whitespace();
        let method = words.next().unwrap_or_default().to_string();
        let target = words.next().unwrap_or_default();
        let path = strip_version(target.split('?').next().unwrap_or_default());
        let key = format!("{method} {path}");
        shared.log.lock().expect("log").push(key.clone());
        shared.changed.notify_waiters();
        let gate = {
            let mut holds = shared.holds.lock().expect("holds");
            let i = holds.iter().position(|(p, _)| key.starts_with(p.as_str()));
            i.map(|i| holds.remove(i).1)
        };
        if let Some(g) = gate {
            g.arrived.add_permits(1);
            if let Ok(p) = g.open.acquire().await {
                p.forget();
            }
        }
        let (status, reply) = answer(&method, &path, &body, &shared);
        let head = match status {
            204 => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
            s => format!(
                "HTTP/1.1 {s} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                reply.len()
            ),
        };
        // The caller may be gone (that is what the tests are about): the work is done anyway.
        if write.write_all(head.as_bytes()).await.is_err()
            || write.write_all(reply.as_bytes()).await.is_err()
        {
            return;
        }
    }
}

/// `/v1.41/volumes` → `/volumes`.
fn strip_version(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("/v")
        && let Some(i) = rest.find('/')
        && rest[..i].chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return rest[i..].to_string();
    }
    path.to_string()
}

fn answer(method: &str, path: &str, body: &[u8], shared: &Shared) -> (u16, String) {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match (method, path) {
        ("GET", "/version") => (
            200,
            r#"{"ApiVersion":"1.41","MinAPIVersion":"1.12","Version":"20.10.24"}"#.to_string(),
        ),
        ("GET", "/_ping") => (200, "\"OK\"".to_string()),
        ("GET", "/containers/json") => (200, "[]".to_string()),
        ("GET", "/volumes") => (200, r#"{"Volumes":[],"Warnings":[]}"#.to_string()),
        ("POST", "/volumes/create") => {
            let name = json["Name"].as_str().unwrap_or("v");
            let v = serde_json::json!({
                "Name": name, "Driver": "local", "Mountpoint": "/fake", "Labels": {},
                "Scope": "local", "Options": {},
            });
            (200, v.to_string())
        }
        ("POST", "/containers/create") => {
            let n = shared.ids.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (200, format!(r#"{{"Id":"fake{n:04}","Warnings":[]}}"#))
        }
        ("POST", p) if p.starts_with("/containers/") && p.ends_with("/start") => {
            (204, String::new())
        }
        ("POST", p) if p.starts_with("/containers/") && p.ends_with("/wait") => {
            (200, r#"{"StatusCode":0}"#.to_string())
        }
        ("DELETE", p) if p.starts_with("/containers/") || p.starts_with("/volumes/") => {
            (204, String::new())
        }
        _ => (
            404,
            r#"{"message":"the fake engine has no such route"}"#.to_string(),
        ),
    }
}
