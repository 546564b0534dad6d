//! The root store: prepared ("golden") data roots of job daemons, and one copy-on-write
//! snapshot of a golden per job, on btrfs.
//!
//! Copying `preload_images` into every job's daemon (`docker save | docker load`) costs seconds
//! per hundred MB, every job. A golden is a daemon's `/var/lib/docker` with those images already
//! loaded, made once per (profile, sidecar image, preload image ids) by a throw-away sidecar and
//! then made read-only. Each job's sidecar gets a writable btrfs snapshot of it as its data root:
//! a few milliseconds whatever the images' size, and what the job writes lands in its snapshot
//! only (the golden is a read-only subvolume, and no job's mount namespace holds it).
//!
//! Layout under the store directory (mode 0700, the runner's alone):
//!
//! ```text
//! golden/<key>   read-only subvolumes, one per golden key
//! build/<key>    a golden being made (removed when the build fails or the runner dies)
//! jobs/<name>    one writable snapshot per job sidecar (`ir-<runner>-<job>-root`)
//! mnt/<name>     rootless: the snapshot's idmapped mount, bound into the sidecar
//! stamps/<name>  made before the snapshot: its mtime says when (sweeps spare young roots)
//! ```
//!
//! The store is the state directory itself when that is btrfs, otherwise a sparse image file
//! `<path>.img` formatted btrfs and loop-mounted at `<path>` (made once, mounted again after a
//! reboot). It belongs to one runner state directory and is used by one runner process at a
//! time (`owner.rs`: the owner record `<path>/owner` and the lock `<path>.lock`). Every
//! operation here is blocking; callers use `spawn_blocking`.
//!
//! Nothing here opens a path inside a snapshot: snapshots are made, mounted and deleted as
//! whole subvolumes (nested subvolumes a job made are deleted by id), so what a job wrote into
//! its data root (links included) never steers a runner operation.

mod btrfs;
pub mod idmap;
pub mod owner;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What went wrong with the store, naming the tool, device or path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The host lacks something the store needs.
    #[error("the root store cannot work on this host: {0}")]
    Unavailable(String),
    /// An operation on an existing store failed.
    #[error("root store: {context}: {detail}")]
    Op {
        /// What the runner was doing.
        context: String,
        /// The cause.
        detail: String,
    },
    /// Another runner process holds the store's lock (`owner.rs`).
    #[error(
        "the root store {} is in use by another runner process{}: one store serves one runner \
         process at a time (give each runner config its own root_store_path)",
        .dir.display(),
        if .holder.is_empty() { String::new() } else { format!(" (pid {})", .holder) }
    )]
    InUse {
        /// The store directory.
        dir: PathBuf,
        /// The holder's pid as its lock file says, or empty.
        holder: String,
    },
    /// The store belongs to the runner of another state directory (`owner.rs`).
    #[error(
        "the root store {} belongs to the runner with state_dir {}, not {}: two runner configs \
         cannot share one store (each would remove the other's goldens); give this config its \
         own root_store_path (the default, <state_dir>/roots, is one per state_dir)",
        .dir.display(),
        .owner.display(),
        .ours.display()
    )]
    Foreign {
        /// The store directory.
        dir: PathBuf,
        /// The state directory in its owner record.
        owner: PathBuf,
        /// The state directory of the runner that tried to use it.
        ours: PathBuf,
    },
}

fn op(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |e| StoreError::Op {
        context,
        detail: e.to_string(),
    }
}

/// The suffix of a job snapshot's name (`ir-<runner>-<job>-root`, from `Naming::name`).
pub const ROOT_SUFFIX: &str = "-root";

/// An open (mounted) store.
#[derive(Debug, Clone)]
pub struct RootStore {
    /// The btrfs directory holding `golden/`, `build/`, `jobs/`, `mnt/`.
    pub dir: PathBuf,
    /// Whether the runner loop-mounted an image file there (else the directory was btrfs).
    pub loop_mounted: bool,
}

/// One `open` at a time in this process: two backends opening the same store must not both
/// mount it (other processes are kept out by the store's lock).
static OPENING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What [`RootStore::release_abandoned`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abandoned {
    /// Not loop-mounted from its image (not mounted, or a btrfs directory the runner did not
    /// mount): nothing to release.
    NotMounted,
    /// A runner process uses it (its pid, or empty when unknown).
    InUse(String),
    /// It belongs to another state directory.
    Foreign(PathBuf),
    /// Job roots are still in it (their sidecars may still hold them).
    Roots(usize),
    /// Unmounted (or would be, on a dry run): its loop device is freed.
    Released,
}

/// Where the store of `state_dir` lives when `root_store_path` is not set.
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join("roots")
}

/// `<dir><suffix>`: the files that belong to a store sit beside its directory, not in it.
fn beside(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The image file backing a store mounted at `dir` when its file system is not btrfs.
pub fn image_file(dir: &Path) -> PathBuf {
    beside(dir, ".img")
}

/// `<dir>.mounted`, beside the image: present from just before the runner loop-mounts its own
/// image until it is unmounted again. Found with the image not mounted, it says the host went
/// down with the store mounted (a process that dies leaves the mount, which the next one
/// adopts; only the kernel forgets it), so the image may be torn: it is mounted without write
/// barriers ([`btrfs::loop_mount`]).
pub fn mount_marker(dir: &Path) -> PathBuf {
    beside(dir, ".mounted")
}

impl RootStore {
    /// Opens the store at `dir` for the runner of `state_dir`, making it first if needed: the
    /// directory itself when it is on btrfs, else `<dir>.img` (sparse, `size` bytes) formatted
    /// btrfs and loop-mounted there. Takes the store's lock for this process (refused while
    /// another runner process holds it) and checks the owner record (refused when the store
    /// belongs to another state directory). A loop mount of `<dir>.img` already there, with no
    /// live process holding the lock, was left by a runner process that died: this process
    /// adopts it. Either way the process that mounted or adopted the store unmounts it when its
    /// last user calls [`RootStore::close`]; a btrfs directory the admin provides is never
    /// unmounted.
    pub fn open(dir: &Path, size: u64, state_dir: &Path) -> Result<RootStore, StoreError> {
        let _one = OPENING.lock().unwrap_or_else(|e| e.into_inner());
        make_private_dir(dir)?;
        owner::claim(dir, true)?;
        match Self::open_claimed(dir, size, state_dir) {
            Ok(s) => Ok(s),
            Err(e) => {
                // The use taken above goes back; a store mounted just now is unmounted again
                // when no other backend of this process uses it.
                if let Err(u) = owner::release(dir, btrfs::unmount_store) {
                    tracing::warn!(error = %u, "could not unmount a root store that failed to open");
                }
                Err(e)
            }
        }
    }

    fn open_claimed(dir: &Path, size: u64, state_dir: &Path) -> Result<RootStore, StoreError> {
        let loop_mounted;
        if !btrfs::is_btrfs(dir).map_err(op(format!("statfs {}", dir.display())))? {
            let img = image_file(dir);
            let marker = mount_marker(dir);
            if img.exists() && marker.exists() {
                // Everything in the store is derived (goldens are built again on demand, job
                // roots are per job), so a store the host went down with is made anew rather
                // than trusted.
                tracing::warn!(
                    image = %img.display(),
                    "the root store was still mounted when the host went down; it is made anew (its goldens are built again)"
                );
                std::fs::remove_file(&img).map_err(op(format!("remove {}", img.display())))?;
            }
            if !img.exists() {
                btrfs::make_image(&img, size)?;
            }
            // The marker first: a host that goes down right after the mount must find it.
            std::fs::write(&marker, b"").map_err(op(format!("write {}", marker.display())))?;
            if let Err(e) = btrfs::loop_mount(&img, dir) {
                let _ = std::fs::remove_file(&marker);
                return Err(e);
            }
            loop_mounted = true;
            owner::set_owns_mount(dir);
            if !btrfs::is_btrfs(dir).map_err(op(format!("statfs {}", dir.display())))? {
                return Err(StoreError::Unavailable(format!(
                    "{} is mounted at {} but is not btrfs",
                    img.display(),
                    dir.display()
                )));
            }
        } else {
            loop_mounted = btrfs::is_own_loop_mount(dir, &image_file(dir));
        }
        owner::check_or_record_owner(dir, state_dir)?;
        // Mounted, not by this process, and this process holds the lock: no other live runner
        // process uses this mount, so the runner that made it died without unmounting it.
        // Adopted, it goes at this process's shutdown like a mount of its own (else it and its
        // loop device would stay for good). Only after the owner check: another state dir's
        // store is not this runner's to unmount.
        if loop_mounted && !owner::owns_mount(dir) {
            owner::set_owns_mount(dir);
            tracing::info!(store = %dir.display(), "adopted the root store a runner process that is gone left mounted; it is unmounted at shutdown");
        }
        // The mounted file system's root has its own mode: keep it the runner's alone.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(op(format!("chmod {}", dir.display())))?;
        let store = RootStore {
            dir: dir.to_path_buf(),
            loop_mounted,
        };
        for sub in ["golden", "build", "jobs", "mnt", "stamps"] {
            make_private_dir(&store.dir.join(sub))?;
        }
        btrfs::check_tool()?;
        Ok(store)
    }

    /// Whether closing this process's last use of the store unmounts it (this process mounted
    /// or adopted it).
    pub fn unmounts_at_close(&self) -> bool {
        owner::owns_mount(&self.dir)
    }

    /// Gives back the use [`RootStore::open`] took. The last use in this process unmounts a
    /// store this process mounted or adopted (the image file stays; the next `open` mounts it
    /// again), then drops the lock. The unmount fails while job roots are mounted or bound
    /// into sidecars.
    pub fn close(&self) -> Result<(), StoreError> {
        owner::release(&self.dir, btrfs::unmount_store)
    }

    /// `runner cleanup`: unmounts the store at `dir` when it is the loop mount of its own
    /// image, no runner process holds its lock (the one that mounted it died), it belongs to
    /// `state_dir` and no job root is left in it. Frees the loop device a killed runner left.
    pub fn release_abandoned(
        dir: &Path,
        state_dir: &Path,
        dry_run: bool,
    ) -> Result<Abandoned, StoreError> {
        let _one = OPENING.lock().unwrap_or_else(|e| e.into_inner());
        if !btrfs::is_own_loop_mount(dir, &image_file(dir)) {
            return Ok(Abandoned::NotMounted);
        }
        match owner::claim(dir, false) {
            Ok(owner::Claim::New) => {}
            // This process uses it (a runner's own sweep): not abandoned.
            Ok(owner::Claim::Shared) => {
                owner::release(dir, |_| Ok(()))?;
                return Ok(Abandoned::InUse(std::process::id().to_string()));
            }
            Err(StoreError::InUse { holder, .. }) => return Ok(Abandoned::InUse(holder)),
            Err(e) => return Err(e),
        }
        let found = Self::judge_abandoned(dir, state_dir);
        if matches!(found, Ok(Abandoned::Released)) && !dry_run {
            owner::set_owns_mount(dir);
        }
        let released = owner::release(dir, btrfs::unmount_store);
        let found = found?;
        released?;
        Ok(found)
    }

    fn judge_abandoned(dir: &Path, state_dir: &Path) -> Result<Abandoned, StoreError> {
        if let Some(owner) = owner::read_owner(dir)?
            && owner != owner::owner_key(state_dir)
        {
            return Ok(Abandoned::Foreign(owner));
        }
        let store = RootStore {
            dir: dir.to_path_buf(),
            loop_mounted: true,
        };
        let roots = store.job_roots().len();
        Ok(if roots > 0 {
            Abandoned::Roots(roots)
        } else {
            Abandoned::Released
        })
    }

    /// A use of the store at `dir` for a sweep that removes what only a dead runner process
    /// can have left (a runner's start-up): refused with [`StoreError::InUse`] while another
    /// runner process holds the store. Give it back with [`RootStore::close`].
    pub fn claim_for_sweep(dir: &Path) -> Result<(), StoreError> {
        owner::claim(dir, false).map(|_| ())
    }

    /// The read-only golden of `key`, if it exists.
    pub fn golden(&self, key: &str) -> Option<PathBuf> {
        let p = self.dir.join("golden").join(key);
        p.is_dir().then_some(p)
    }

    /// Keys of the goldens in the store.
    pub fn golden_keys(&self) -> Vec<String> {
        list_names(&self.dir.join("golden"))
    }

    /// A fresh, empty, writable subvolume for building the golden of `key` (a leftover of an
    /// earlier attempt is deleted first). The caller's throw-away daemon fills it.
    pub fn begin_golden(&self, key: &str) -> Result<PathBuf, StoreError> {
        let p = self.dir.join("build").join(key);
        if p.exists() {
            btrfs::delete_subvolume(&p)?;
        }
        btrfs::create_subvolume(&p)?;
        Ok(p)
    }

    /// Makes the built subvolume of `key` the read-only golden (a read-only snapshot, atomic),
    /// then deletes the build.
    pub fn commit_golden(&self, key: &str) -> Result<PathBuf, StoreError> {
        let build = self.dir.join("build").join(key);
        let golden = self.dir.join("golden").join(key);
        if golden.exists() {
            btrfs::delete_subvolume(&golden)?;
        }
        btrfs::snapshot(&build, &golden, true)?;
        btrfs::delete_subvolume(&build)?;
        Ok(golden)
    }

    /// Deletes the build of `key` (a failed golden build).
    pub fn discard_build(&self, key: &str) -> Result<(), StoreError> {
        let p = self.dir.join("build").join(key);
        if p.exists() {
            btrfs::delete_subvolume(&p)?;
        }
        Ok(())
    }

    /// Deletes the golden of `key` (no longer wanted; jobs running on snapshots of it are not
    /// affected: a snapshot does not depend on its source).
    pub fn remove_golden(&self, key: &str) -> Result<bool, StoreError> {
        check_name(key)?;
        let p = self.dir.join("golden").join(key);
        if !p.exists() {
            return Ok(false);
        }
        btrfs::delete_subvolume(&p)?;
        Ok(true)
    }

    /// Keys of the goldens being built now (`build/<key>`): a live runner's throw-away daemon
    /// is filling them, or a dead runner left them (its next build of the key replaces it).
    pub fn builds(&self) -> Vec<String> {
        list_names(&self.dir.join("build"))
    }

    /// The subvolume id of the golden of `key` and how long ago it was made (`None` when the
    /// tool does not say).
    pub fn golden_info(&self, key: &str) -> Result<(u64, Option<std::time::Duration>), StoreError> {
        check_name(key)?;
        let info = btrfs::subvolume_info(&self.dir.join("golden").join(key))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        let age = match (now, info.created) {
            (Some(n), Some(c)) => u64::try_from(n.saturating_sub(c))
                .ok()
                .map(std::time::Duration::from_secs),
            _ => None,
        };
        Ok((info.id, age))
    }

    /// Waits until the deleted subvolumes `ids` are cleaned (their space freed).
    pub fn wait_cleaned(&self, ids: &[u64]) -> Result<(), StoreError> {
        btrfs::wait_cleaned(&self.dir, ids)
    }

    /// A writable snapshot of the golden of `key` for the sidecar `name`; with `map`, mounted
    /// idmapped (the golden's uid block shown as the job's) at `mnt/<name>`. Returns the
    /// directory to bind at the sidecar's `/var/lib/docker`.
    pub fn snapshot_for(
        &self,
        key: &str,
        name: &str,
        map: Option<idmap::IdMap>,
    ) -> Result<PathBuf, StoreError> {
        check_name(name)?;
        let golden = self.dir.join("golden").join(key);
        let snap = self.dir.join("jobs").join(name);
        if snap.exists() {
            // A leftover of a crashed runner with the same job id: never reuse it.
            self.remove_root(name)?;
        }
        let stamp = self.dir.join("stamps").join(name);
        std::fs::write(&stamp, b"").map_err(op(format!("write {}", stamp.display())))?;
        if let Err(e) = btrfs::snapshot(&golden, &snap, false) {
            let _ = std::fs::remove_file(&stamp);
            return Err(e);
        }
        let Some(map) = map else {
            return Ok(snap);
        };
        let mnt = self.dir.join("mnt").join(name);
        let made = std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&mnt)
            .map_err(op(format!("mkdir {}", mnt.display())))
            .and_then(|()| idmap::mount_idmapped(&snap, &mnt, map));
        if let Err(e) = made {
            let _ = self.remove_root(name);
            return Err(e);
        }
        Ok(mnt)
    }

    /// Removes the job root `name`: its idmapped mount (if any), then its snapshot and every
    /// subvolume the job made inside it. Returns whether anything existed. The sidecar must be
    /// gone (its mount namespace no longer holds the snapshot).
    pub fn remove_root(&self, name: &str) -> Result<bool, StoreError> {
        check_name(name)?;
        let mnt = self.dir.join("mnt").join(name);
        let snap = self.dir.join("jobs").join(name);
        let mut existed = false;
        if mnt.exists() {
            existed = true;
            if btrfs::is_mount_point(&mnt).unwrap_or(false) {
                idmap::unmount(&mnt)?;
            }
            std::fs::remove_dir(&mnt).map_err(op(format!("rmdir {}", mnt.display())))?;
        }
        if snap.exists() {
            existed = true;
            btrfs::delete_tree(&self.dir, &snap)?;
        }
        let stamp = self.dir.join("stamps").join(name);
        match std::fs::remove_file(&stamp) {
            Ok(()) => existed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(op(format!("remove {}", stamp.display()))(e)),
        }
        Ok(existed)
    }

    /// How long ago the root `name` was made (its stamp's age); `None` without a stamp.
    pub fn root_age(&self, name: &str) -> Option<std::time::Duration> {
        let m = std::fs::metadata(self.dir.join("stamps").join(name))
            .ok()?
            .modified()
            .ok()?;
        m.elapsed().ok()
    }

    /// The store at `dir` as it is, without mounting or making anything (sweeps); `None`
    /// when there is no store there.
    pub fn existing(dir: &Path) -> Option<RootStore> {
        if !dir.join("jobs").is_dir() || !btrfs::is_btrfs(dir).unwrap_or(false) {
            return None;
        }
        Some(RootStore {
            dir: dir.to_path_buf(),
            loop_mounted: btrfs::is_own_loop_mount(dir, &image_file(dir)),
        })
    }

    /// Names of the job roots in the store (`ir-<runner>-<job>-root`).
    pub fn job_roots(&self) -> Vec<String> {
        let mut v = list_names(&self.dir.join("jobs"));
        for m in list_names(&self.dir.join("mnt"))
            .into_iter()
            .chain(list_names(&self.dir.join("stamps")))
        {
            if !v.contains(&m) {
                v.push(m);
            }
        }
        v.sort();
        v
    }

    /// Bytes the store's file system uses (what the goldens and the jobs' writes hold).
    pub fn used_bytes(&self) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(&self.dir).ok()?;
        Some(
            (st.blocks().saturating_sub(st.blocks_free()) as u64)
                .saturating_mul(st.fragment_size() as u64),
        )
    }
}

/// The job and runner a job root's name belongs to: `ir-<runner>-<job>-root`.
pub fn parse_root_name(name: &str) -> Option<(&str, u64)> {
    let rest = name.strip_prefix("ir-")?.strip_suffix(ROOT_SUFFIX)?;
    let (runner, job) = rest.rsplit_once('-')?;
    Some((runner, job.parse().ok()?))
}

/// A name is one path component of the runner's own making.
fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Op {
            context: "name a job root".to_string(),
            detail: format!("{name:?} is not a plain name"),
        })
    }
}

fn make_private_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(op(format!("create {}", dir.display()))(e)),
    }
}

fn list_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_names_parse() {
        assert_eq!(parse_root_name("ir-t-abc-42-root"), Some(("t-abc", 42)));
        assert_eq!(parse_root_name("ir-r1-7-root"), Some(("r1", 7)));
        assert_eq!(parse_root_name("ir-r1-x-root"), None);
        assert_eq!(parse_root_name("golden"), None);
        assert!(check_name("ir-r1-7-root").is_ok());
        assert!(check_name("..").is_err());
        assert!(check_name("a/b").is_err());
        assert_eq!(
            image_file(Path::new("/var/lib/ir/roots")),
            PathBuf::from("/var/lib/ir/roots.img")
        );
    }
}
