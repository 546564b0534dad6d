//! The links a job on a pre-started sidecar needs inside that sidecar, written once as a plan
//! and made in one of two ways.
//!
//! A warm slot's sidecar was started before its job was known, so it mounts the slot's
//! directories (`gitlab-job-<slot>`, `.tmp`), not the job's. The job's daemon must still
//! resolve `-v $CI_PROJECT_DIR:/app`, so its `builds_dir` gets `gitlab-job-<job>` and
//! `gitlab-job-<job>.tmp` as relative links to the slot's directories, and with
//! `GIT_CLONE_PATH` one more link (with the directories on its way) to the slot's project
//! directory. Whatever the job later does to these links changes only its own sidecar's view:
//! inside the sidecar the slot's directories are mount points (a rename fails with EBUSY).
//!
//! [`SidecarLinks::make_in`] makes them through a handle on the sidecar's root (the runner's
//! way, ~3 ms); [`SidecarLinks::tar`] gives the same entries as an archive for the engine's
//! `put_archive` (the fallback, 0.02–0.05 s, see `dind::Core::attach`). Both read the same
//! plan, so the two ways cannot drift apart.

use crate::docker::Docker;
use crate::paths::beneath::Dir;
use crate::paths::{JobPaths, clone_link};
use std::path::{Path, PathBuf};

/// One link below `builds_dir`, relative to it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    /// Directories to create first (0755), below `builds_dir`; empty for none.
    parent: PathBuf,
    /// The link's path below `builds_dir` (its last component is the link's name).
    path: PathBuf,
    /// What it points to, relative to the link's own directory.
    target: PathBuf,
}

/// The links of one job in one pre-started sidecar (see the module docs).
#[derive(Debug, Clone)]
pub(super) struct SidecarLinks {
    builds: PathBuf,
    links: Vec<Link>,
}

impl SidecarLinks {
    /// The plan for a job whose paths are `job` on a slot whose directories are `slot` (both
    /// below `builds`), with the job's `GIT_CLONE_PATH` if it has one. Checked here, before
    /// anything is made: each path has a file name, and `clone_path` lies below `builds`.
    pub(super) fn plan(
        builds: &Path,
        job: &JobPaths,
        slot: &JobPaths,
        clone_path: Option<&Path>,
    ) -> Result<SidecarLinks, String> {
        if !builds.is_absolute() {
            return Err(format!("{} is not an absolute path", builds.display()));
        }
        let mut links = Vec::new();
        for (link, dir) in [
            (&job.project_dir, &slot.project_dir),
            (&job.tmp_dir, &slot.tmp_dir),
        ] {
            let (Some(name), Some(target)) = (link.file_name(), dir.file_name()) else {
                return Err(format!("{} has no file name", link.display()));
            };
            links.push(Link {
                parent: PathBuf::new(),
                path: PathBuf::from(name),
                target: PathBuf::from(target),
            });
        }
        if let Some(clone_path) = clone_path {
            let rel = clone_path.strip_prefix(builds).map_err(|_| {
                format!("{} is not below {}", clone_path.display(), builds.display())
            })?;
            let (Some(_), Some(target)) = (rel.file_name(), slot.project_dir.file_name()) else {
                return Err(format!("{} has no file name", clone_path.display()));
            };
            links.push(Link {
                parent: rel.parent().map(Path::to_path_buf).unwrap_or_default(),
                path: rel.to_path_buf(),
                target: clone_link::relative_target(rel, target),
            });
        }
        Ok(SidecarLinks {
            builds: builds.to_path_buf(),
            links,
        })
    }

    /// Makes the links in `sidecar` (a running container of `docker`): directly
    /// ([`SidecarLinks::make_directly`]) where the runner can, else with the engine's
    /// `put_archive` of [`SidecarLinks::tar`] in `builds_dir`. Says which way it went.
    pub(super) async fn make(
        &self,
        docker: &Docker,
        sidecar: &str,
    ) -> Result<&'static str, String> {
        let why = match self.make_directly(docker, sidecar).await {
            Ok(()) => return Ok("directly"),
            Err(why) => why,
        };
        tracing::debug!(
            sidecar,
            why = %why,
            "linking the job's directories through the engine instead"
        );
        let tar = self
            .tar()
            .map_err(|e| format!("build the links' archive: {e}"))?;
        docker
            .put_archive(sidecar, &self.builds.to_string_lossy(), tar)
            .await
            .map_err(|e| e.to_string())?;
        Ok("through the engine")
    }

    /// Makes the links in the file system whose root is `root` (a sidecar's, through its first
    /// process). `builds_dir` is reached from the root without following any link: a sidecar
    /// whose path to it has one (an image with `/tmp` a link, say) gets an error, and the
    /// caller falls back to the engine. What the links point to is never opened.
    pub(super) fn make_in(&self, root: &Dir) -> Result<(), String> {
        let rel = self
            .builds
            .strip_prefix("/")
            .map_err(|_| format!("{} is not an absolute path", self.builds.display()))?;
        let dir = root.open_dir(rel).map_err(|e| e.to_string())?;
        for link in &self.links {
            let name = link.path.file_name().map(Path::new).unwrap_or(&link.path);
            let at = if link.parent.as_os_str().is_empty() {
                None
            } else {
                Some(
                    dir.create_dirs(&link.parent, 0o755)
                        .map_err(|e| e.to_string())?,
                )
            };
            at.as_ref()
                .unwrap_or(&dir)
                .symlink(&link.target, name)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Makes the links in `sidecar` (a running container of `docker`) through its first
    /// process: the pid from the engine, `/proc/<pid>` checked to be that container's, its
    /// root opened through that handle (`sidecar_proc`). No request to the engine beyond the
    /// inspect, so the sidecar's other requests (its CPU weight) do not queue behind it.
    async fn make_directly(&self, docker: &Docker, sidecar: &str) -> Result<(), String> {
        let pid = docker
            .container_pid(sidecar)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the sidecar is not running".to_string())?;
        let (id, plan) = (sidecar.to_string(), self.clone());
        tokio::task::spawn_blocking(move || {
            let root = super::sidecar_proc::SidecarProc::open(pid, &id)?.root()?;
            plan.make_in(&root)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The same links as a tar to extract in `builds_dir`: the directories on the way first
    /// (0755), then each link.
    fn tar(&self) -> Result<Vec<u8>, std::io::Error> {
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        // Owned by root inside the sidecar, like what the direct way makes.
        let header = |kind: tar::EntryType, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(mtime);
            h
        };
        let mut b = tar::Builder::new(Vec::new());
        for link in &self.links {
            let mut dir = PathBuf::new();
            for c in link.parent.components() {
                dir.push(c);
                let mut h = header(tar::EntryType::Directory, 0o755);
                b.append_data(&mut h, &dir, std::io::empty())?;
            }
            let mut h = header(tar::EntryType::Symlink, 0o777);
            b.append_link(&mut h, &link.path, &link.target)?;
        }
        b.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::JobId;

    const SLOT: u64 = 4_611_686_018_427_387_905;

    fn plan(builds: &Path, clone_path: Option<&Path>) -> SidecarLinks {
        let job = crate::paths::job_paths(builds, JobId::new(7)).expect("paths");
        let slot = crate::paths::job_paths(builds, JobId::new(SLOT)).expect("paths");
        SidecarLinks::plan(builds, &job, &slot, clone_path).expect("plan")
    }

    /// What a tree holds below `builds`: links with their targets, directories as `dir`.
    fn listing(tar: &[u8]) -> Vec<(String, String)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let what = match e.header().entry_type() {
                    tar::EntryType::Symlink => e
                        .link_name()
                        .expect("link name")
                        .expect("a link has a target")
                        .display()
                        .to_string(),
                    tar::EntryType::Directory => "dir".to_string(),
                    other => format!("{other:?}"),
                };
                (
                    e.path()
                        .expect("path")
                        .display()
                        .to_string()
                        .trim_end_matches('/')
                        .to_string(),
                    what,
                )
            })
            .collect()
    }

    #[test]
    fn the_tar_and_the_direct_way_make_the_same_links() {
        let builds = Path::new("/tmp/ir-builds");
        let p = plan(builds, Some(&builds.join("group/sub/project")));
        let want = vec![
            ("gitlab-job-7".to_string(), format!("gitlab-job-{SLOT}")),
            (
                "gitlab-job-7.tmp".to_string(),
                format!("gitlab-job-{SLOT}.tmp"),
            ),
            ("group".to_string(), "dir".to_string()),
            ("group/sub".to_string(), "dir".to_string()),
            (
                "group/sub/project".to_string(),
                format!("../../gitlab-job-{SLOT}"),
            ),
        ];
        assert_eq!(listing(&p.tar().expect("tar")), want);

        let t = tempfile::tempdir().expect("tempdir");
        let inside = t.path().join("tmp/ir-builds");
        std::fs::create_dir_all(&inside).expect("mkdir");
        p.make_in(&Dir::open_trusted(t.path()).expect("root"))
            .expect("linked");
        for (path, what) in &want {
            let at = inside.join(path);
            if what == "dir" {
                assert!(
                    std::fs::symlink_metadata(&at).expect("stat").is_dir(),
                    "{path}"
                );
            } else {
                assert_eq!(
                    std::fs::read_link(&at).expect("link"),
                    PathBuf::from(what),
                    "{path}"
                );
            }
        }
    }

    #[test]
    fn bad_paths_fail_the_plan() {
        let builds = Path::new("/builds");
        let job = crate::paths::job_paths(builds, JobId::new(7)).expect("paths");
        let slot = crate::paths::job_paths(builds, JobId::new(SLOT)).expect("paths");
        let err = SidecarLinks::plan(builds, &job, &slot, Some(Path::new("/elsewhere/p")))
            .expect_err("outside builds");
        assert!(err.contains("is not below /builds"), "{err}");
        assert!(SidecarLinks::plan(Path::new("builds"), &job, &slot, None).is_err());
        // Two links and nothing else without GIT_CLONE_PATH.
        assert_eq!(
            listing(&plan(builds, None).tar().expect("tar")).len(),
            2,
            "only the job's two links"
        );
    }

    #[test]
    fn builds_is_never_reached_through_a_link() {
        // The sidecar's `/tmp` swapped for a link out of its root: refused, not followed, and
        // nothing is made behind it.
        let p = plan(
            Path::new("/tmp/ir-builds"),
            Some(Path::new("/tmp/ir-builds/g/p")),
        );
        let other = tempfile::tempdir().expect("tempdir");
        let swapped = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(other.path().join("ir-builds")).expect("mkdir");
        std::os::unix::fs::symlink(other.path(), swapped.path().join("tmp")).expect("symlink");
        let root = Dir::open_trusted(swapped.path()).expect("root");
        assert!(p.make_in(&root).is_err());
        assert_eq!(
            std::fs::read_dir(other.path().join("ir-builds"))
                .expect("read")
                .count(),
            0,
            "nothing was made through the link"
        );
    }
}
