//! moto's S3 server (`python3 -m moto.server`, PyPI `moto[server]`, installed by `.ci/run`),
//! one per test on a free loopback port, so tests run side by side; killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bucket every server starts with.
pub const BUCKET: &str = "runner-cache";

/// A moto S3 server on a free loopback port.
pub struct Moto {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// The key pair of an IAM user moto made, allowed `s3:*`.
pub struct Keys {
    /// Its access key id.
    pub access: String,
    /// Its secret key.
    pub secret: String,
}

/// Requests moto serves without checking credentials when it checks them
/// (`INITIAL_NO_AUTH_ACTION_COUNT`): the bucket, the user, its key, its policy.
const SETUP_REQUESTS: usize = 4;

impl Moto {
    /// A server that accepts any credentials, with [`BUCKET`].
    pub async fn start() -> Moto {
        let moto = Moto::spawn(None).await;
        moto.create_bucket().await;
        moto
    }

    /// A server that checks credentials as S3 does (unknown access key, wrong secret), with
    /// [`BUCKET`] and one IAM user whose keys are returned.
    pub async fn start_with_auth() -> (Moto, Keys) {
        let moto = Moto::spawn(Some(SETUP_REQUESTS)).await;
        moto.create_bucket().await;
        let iam = |action: &str| format!("Action={action}&UserName=cache&Version=2010-05-08");
        let (status, body) = moto.iam(&iam("CreateUser")).await;
        assert_eq!(status, 200, "create user: {body}");
        let (status, body) = moto.iam(&iam("CreateAccessKey")).await;
        assert_eq!(status, 200, "create key: {body}");
        let tag = |name: &str| {
            body.split(&format!("<{name}>"))
                .nth(1)
                .and_then(|s| s.split(&format!("</{name}>")).next())
                .unwrap_or_else(|| panic!("{name} in {body}"))
                .to_string()
        };
        let keys = Keys {
            access: tag("AccessKeyId"),
            secret: tag("SecretAccessKey"),
        };
        // `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}`
        let policy = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A\
                      %22Allow%22%2C%22Action%22%3A%22s3%3A%2A%22%2C%22Resource%22%3A%22%2A%22%7D%5D%7D";
        let (status, body) = moto
            .iam(&format!(
                "{}&PolicyName=cache&PolicyDocument={policy}",
                iam("PutUserPolicy")
            ))
            .await;
        assert_eq!(status, 200, "put policy: {body}");
        (moto, keys)
    }

    async fn spawn(no_auth_requests: Option<usize>) -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(n) = no_auth_requests {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let child = cmd
            .spawn()
            .expect("python3 -m moto.server (pip install 'moto[server]')");
        let moto = Moto {
            child: Some(child),
            port,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }

    async fn create_bucket(&self) {
        let (status, body) = http(self.port, "PUT", &format!("/{BUCKET}"), b"").await;
        assert_eq!(status, 200, "create bucket: {body}");
    }

    /// An IAM query request. moto routes by the service in the Authorization header's scope;
    /// during its setup requests the signature itself is not checked.
    async fn iam(&self, body: &str) -> (u16, String) {
        request(
            self.port,
            "POST",
            "/",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                (
                    "Authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIASETUP/20240101/us-east-1/iam/aws4_request, \
                     SignedHeaders=host, Signature=0",
                ),
            ],
            body.as_bytes(),
        )
        .await
    }

    /// Stops the server (a store that is down).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every object name in [`BUCKET`] (an open server only).
    pub async fn objects(&self) -> Vec<String> {
        let (status, body) = http(self.port, "GET", &format!("/{BUCKET}?list-type=2"), b"").await;
        assert_eq!(status, 200, "{body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One plain HTTP/1.1 request to moto (an open server accepts unsigned bucket operations).
pub async fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    request(port, method, path, &[], body).await
}

async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}
