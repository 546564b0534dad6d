//! The fake's git remote: smart HTTP served by `git http-backend`, authenticated like GitLab with
//! `gitlab-ci-token:<job token>` of a running job; Git LFS as GitLab serves it (the batch API at
//! `<repo>.git/info/lfs/objects/batch`, objects at `<repo>.git/gitlab-lfs/objects/<oid>`, both
//! with the same job-token auth); repositories with submodules (gitlinks and `.gitmodules`).

use super::api::error;
use super::{FakeGitlab, Shared, lock};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;

pub(super) async fn git_backend(
    State((s, root)): State<(Shared, PathBuf)>,
    Path(rest): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use base64::Engine;
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|cred| {
            let (user, pass) = cred.split_once(':')?;
            let st = lock(&s);
            Some(
                user == "gitlab-ci-token"
                    && st.jobs.values().any(|j| {
                        j.token == pass && matches!(j.state.as_str(), "running" | "canceling")
                    }),
            )
        })
        .unwrap_or(false);
    if !authorized {
        let mut r = StatusCode::UNAUTHORIZED.into_response();
        r.headers_mut().insert(
            "WWW-Authenticate",
            HeaderValue::from_static("Basic realm=\"GitLab\""),
        );
        return r;
    }
    if let Some(repo) = rest.strip_suffix("/info/lfs/objects/batch") {
        return lfs_batch(&s, repo, &headers, &body);
    }
    if let Some((_, oid)) = rest.split_once("/gitlab-lfs/objects/") {
        return match lock(&s).lfs_objects.get(oid) {
            Some(data) => (StatusCode::OK, data.clone()).into_response(),
            None => error(StatusCode::NOT_FOUND, "404 Not Found"),
        };
    }
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", format!("/{rest}"))
        .env("QUERY_STRING", uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", h("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "gitlab-ci-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("HTTP_GIT_PROTOCOL", h("git-protocol"))
        .env("HTTP_CONTENT_ENCODING", h("content-encoding"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let Ok(mut child) = cmd.spawn() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot run git http-backend",
        );
    };
    if let Some(mut stdin) = child.stdin.take() {
        // Written from a task so a large answer cannot deadlock against an unread request.
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&body).await;
        });
    }
    let Ok(out) = child.wait_with_output().await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "git http-backend failed");
    };
    let raw = out.stdout;
    let (head, body) = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => (&raw[..p], &raw[p + 4..]),
        None => match raw.windows(2).position(|w| w == b"\n\n") {
            Some(p) => (&raw[..p], &raw[p + 2..]),
            None => (&raw[..0], &raw[..]),
        },
    };
    let mut resp = Response::new(axum::body::Body::from(body.to_vec()));
    for line in String::from_utf8_lossy(head).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            *resp.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::try_from(k.trim()),
            HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// `POST <repo>.git/info/lfs/objects/batch` (download): each known object gets a download
/// action at this server (as the client reached it) with the caller's own authorization, as
/// GitLab answers; an unknown one gets the API's 404 object error.
fn lfs_batch(s: &Shared, repo: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(body) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "bad batch request");
    };
    if req["operation"] != "download" {
        return error(StatusCode::FORBIDDEN, "only downloads");
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let st = lock(s);
    let objects: Vec<serde_json::Value> = req["objects"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|o| {
            let oid = o["oid"].as_str().unwrap_or_default();
            match st.lfs_objects.get(oid) {
                Some(data) => serde_json::json!({
                    "oid": oid, "size": data.len(), "authenticated": true,
                    "actions": {"download": {
                        "href": format!("http://{host}/git/{repo}/gitlab-lfs/objects/{oid}"),
                        "header": {"Authorization": auth},
                        "expires_in": 3600
                    }}
                }),
                None => serde_json::json!({
                    "oid": oid, "size": o["size"],
                    "error": {"code": 404, "message": "Object does not exist on the server"}
                }),
            }
        })
        .collect();
    let mut r =
        axum::Json(serde_json::json!({"transfer": "basic", "objects": objects})).into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/vnd.git-lfs+json"),
    );
    r
}

/// Runs git in `dir` with a fixed identity; panics with git's stderr on failure.
async fn git(args: &[&str], dir: &std::path::Path) -> String {
    let out = tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Fake")
        .env("GIT_AUTHOR_EMAIL", "fake@example.invalid")
        .env("GIT_COMMITTER_NAME", "Fake")
        .env("GIT_COMMITTER_EMAIL", "fake@example.invalid")
        .output()
        .await
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A submodule of a repository made by [`FakeGitlab::create_repo_with_submodules`].
pub struct Submodule<'a> {
    /// Where it is checked out in the superproject.
    pub path: &'a str,
    /// Its URL in `.gitmodules` (relative ones, `../other.git`, resolve against the remote).
    pub url: &'a str,
    /// The commit the superproject records.
    pub sha: &'a str,
}

impl FakeGitlab {
    /// Stores `data` as a Git LFS object and returns the pointer file that stands for it in a
    /// repository (with `<path> filter=lfs diff=lfs merge=lfs -text` in `.gitattributes`).
    pub fn add_lfs_object(&self, data: &[u8]) -> String {
        use sha2::Digest;
        let oid = hex::encode(sha2::Sha256::digest(data));
        let pointer = format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {}\n",
            data.len()
        );
        lock(&self.state).lfs_objects.insert(oid, data.to_vec());
        pointer
    }

    /// Creates `<name>.git` with one commit holding `files` and `submodules` (gitlinks and
    /// their `.gitmodules` entries); also `refs/pipelines/<id>` when given. Returns the sha.
    pub async fn create_repo_with_submodules(
        &self,
        name: &str,
        files: &[(&str, &str)],
        submodules: &[Submodule<'_>],
        pipeline_id: Option<u64>,
    ) -> String {
        let work = tempfile::tempdir().expect("temp work tree");
        let w = work.path();
        git(&["init", "-q", "-b", "main"], w).await;
        for (path, content) in files {
            let p = w.join(path);
            if let Some(parent) = p.parent() {
                tokio::fs::create_dir_all(parent).await.expect("mkdir");
            }
            tokio::fs::write(&p, content).await.expect("write file");
        }
        if !submodules.is_empty() {
            let mut gitmodules = String::new();
            for m in submodules {
                gitmodules.push_str(&format!(
                    "[submodule \"{p}\"]\n\tpath = {p}\n\turl = {u}\n",
                    p = m.path,
                    u = m.url
                ));
            }
            tokio::fs::write(w.join(".gitmodules"), gitmodules)
                .await
                .expect("write .gitmodules");
        }
        git(&["add", "-A"], w).await;
        // After `add -A`, which would drop index entries whose paths the work tree lacks.
        for m in submodules {
            let info = format!("160000,{},{}", m.sha, m.path);
            git(&["update-index", "--add", "--cacheinfo", &info], w).await;
        }
        git(&["commit", "-q", "--allow-empty", "-m", "initial"], w).await;
        let sha = git(&["rev-parse", "HEAD"], w).await;
        let bare = self.git_root.path().join(format!("{name}.git"));
        let bare_s = bare.display().to_string();
        git(
            &["clone", "-q", "--bare", &w.display().to_string(), &bare_s],
            w,
        )
        .await;
        if let Some(p) = pipeline_id {
            git(&["update-ref", &format!("refs/pipelines/{p}"), &sha], &bare).await;
        }
        sha
    }
}
