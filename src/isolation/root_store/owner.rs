//! Who a store belongs to, and which runner process uses it now.
//!
//! - **The owner record** `<dir>/owner`: the state directory of the runner the store belongs
//!   to, written by the first `open` of the store. A runner (or `runner cleanup`) with another
//!   state directory neither uses the store nor sweeps its goldens: two configs on one store
//!   would each remove the other's goldens (their keys are no entry of the other's config), and
//!   would delete each other's golden builds of a key they share (`begin_golden`). One store
//!   per state directory (the default, `<state_dir>/roots`) is the rule; `docs/preload.md`
//!   ("Disk") says why sharing is refused rather than made to work.
//! - **The lock** `<dir>.lock`, beside the store (and its image file, so a process of any
//!   config takes the same lock): an exclusive `flock` held by the runner process using the
//!   store, from its `open` to its shutdown. The kernel drops it when the process dies, even by
//!   SIGKILL, so holding it proves that no live runner process uses the store. That is what
//!   lets a restarted runner adopt the loop mount its killed predecessor left (and unmount it at
//!   its own shutdown), and `runner cleanup` release it when no runner runs; while a runner
//!   holds the lock, nobody else unmounts the store or sweeps all of its job roots. The file
//!   holds the holder's pid, for messages only.
//!
//! Within one process several backends (one per `[[runners]]` entry) share one hold: the
//! process's count of users, the last of which unmounts the store if the process owns its mount.

use super::{StoreError, op};
use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The owner record's name inside the store.
pub const OWNER_FILE: &str = "owner";

/// The lock file of the store at `dir`: `<dir>.lock`.
pub fn lock_file(dir: &Path) -> PathBuf {
    super::beside(dir, ".lock")
}

/// This process's hold of one store.
struct Held {
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// Backends (and sweeps) of this process using the store now.
    users: usize,
    /// Whether this process unmounts the store when its last user is done: it mounted the
    /// runner's own image there, or adopted the mount a dead runner process left.
    owns_mount: bool,
}

/// The stores this process holds, by directory.
static HELD: Mutex<BTreeMap<PathBuf, Held>> = Mutex::new(BTreeMap::new());

fn held() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, Held>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a claim went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// This process took the lock now: no other runner process uses the store.
    New,
    /// This process held it already (another backend of it uses the store).
    Shared,
}

/// Takes one use of the store at `dir` for this process: the lock when the process does not
/// hold it yet. `wait` retries for a few seconds (a `runner cleanup` holds the lock only for
/// as long as its unmount takes); without it a held lock fails at once. Fails with
/// [`StoreError::InUse`] while another process holds it.
pub(super) fn claim(dir: &Path, wait: bool) -> Result<Claim, StoreError> {
    let mut map = held();
    if let Some(h) = map.get_mut(dir) {
        h.users += 1;
        return Ok(Claim::Shared);
    }
    let path = lock_file(dir);
    let mut tries = if wait { 50 } else { 1 };
    let lock = loop {
        // O_NOFOLLOW: the lock sits in the runner's own (root's) directory, never a link.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(op(format!("open {}", path.display())))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => break l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if tries > 1 => {
                tries -= 1;
                pause();
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(StoreError::InUse {
                    dir: dir.to_path_buf(),
                    holder: holder(&path),
                });
            }
            Err((_, e)) => {
                return Err(op(format!("lock {}", path.display()))(e.into()));
            }
        }
    };
    let mut lock = lock;
    // For messages only (who holds it); a failed write changes nothing about the hold.
    let pid = std::process::id().to_string();
    let _ = lock
        .set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| lock.write_all(pid.as_bytes()));
    map.insert(
        dir.to_path_buf(),
        Held {
            _lock: lock,
            users: 1,
            owns_mount: false,
        },
    );
    Ok(Claim::New)
}

/// Waits a moment between two tries of the lock (`claim` runs on a blocking thread).
#[expect(
    clippy::disallowed_methods,
    reason = "called only from RootStore::open, which runs in spawn_blocking"
)]
fn pause() {
    std::thread::sleep(std::time::Duration::from_millis(100));
}

/// The pid in a held lock file, as text for a message (`""` when unreadable).
fn holder(path: &Path) -> String {
    let mut s = String::new();
    let read = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .and_then(|f| f.take(32).read_to_string(&mut s));
    match read {
        Ok(_) if s.trim().parse::<u32>().is_ok() => s.trim().to_string(),
        _ => String::new(),
    }
}

/// Records that this process unmounts the store at `dir` when its last user is done.
pub(super) fn set_owns_mount(dir: &Path) {
    if let Some(h) = held().get_mut(dir) {
        h.owns_mount = true;
    }
}

/// Whether this process will unmount the store at `dir` (it holds it and owns its mount).
pub(super) fn owns_mount(dir: &Path) -> bool {
    held().get(dir).is_some_and(|h| h.owns_mount)
}

/// Gives back one use of the store at `dir`. The last one unmounts the store if this process
/// owns its mount (`unmount`), then drops the lock, so only a store no runner process uses is
/// ever unmounted. The lock goes even when the unmount fails (the next runner adopts the mount).
pub(super) fn release(
    dir: &Path,
    unmount: impl FnOnce(&Path) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut map = held();
    let Some(h) = map.get_mut(dir) else {
        return Ok(());
    };
    h.users = h.users.saturating_sub(1);
    if h.users > 0 {
        return Ok(());
    }
    let owns = h.owns_mount;
    // Unmounted while the lock is still held: no other process can open the store meanwhile.
    let done = if owns { unmount(dir) } else { Ok(()) };
    map.remove(dir);
    done
}

/// The state directory the store at `dir` belongs to, if it has an owner record.
pub fn read_owner(dir: &Path) -> Result<Option<PathBuf>, StoreError> {
    let path = dir.join(OWNER_FILE);
    let mut s = String::new();
    let read = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .and_then(|f| f.take(8192).read_to_string(&mut s));
    match read {
        Ok(_) => Ok(Some(PathBuf::from(s.trim_end_matches('\n')))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(op(format!("read {}", path.display()))(e)),
    }
}

/// The form of a state directory the owner record holds and is compared with: absolute,
/// links resolved when it exists (two spellings of one directory are one owner).
pub fn owner_key(state_dir: &Path) -> PathBuf {
    std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf())
}

/// Checks that the store at `dir` belongs to `state_dir`, recording it as the owner when the
/// store has no record yet (a new store, or one made before records existed).
pub(super) fn check_or_record_owner(dir: &Path, state_dir: &Path) -> Result<(), StoreError> {
    let ours = owner_key(state_dir);
    if let Some(owner) = read_owner(dir)? {
        return if owner == ours {
            Ok(())
        } else {
            Err(StoreError::Foreign {
                dir: dir.to_path_buf(),
                owner,
                ours,
            })
        };
    }
    let path = dir.join(OWNER_FILE);
    let mut text = ours.as_os_str().as_encoded_bytes().to_vec();
    text.push(b'\n');
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_all()));
    match made {
        Ok(()) => Ok(()),
        // Another process of another config recorded itself first: judge its record.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_recorded(dir, &ours),
        Err(e) => Err(op(format!("write {}", path.display()))(e)),
    }
}

fn check_recorded(dir: &Path, ours: &Path) -> Result<(), StoreError> {
    match read_owner(dir)? {
        Some(owner) if owner != ours => Err(StoreError::Foreign {
            dir: dir.to_path_buf(),
            owner,
            ours: ours.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock another process holds (here: another open file description, which `flock`
    /// treats the same) refuses the claim and names the holder; once it is gone the claim
    /// succeeds, the process's second user shares it, and the last release runs the unmount
    /// only when the process owns the mount.
    #[test]
    fn the_lock_tells_a_live_holder_and_the_last_user_unmounts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("roots");
        std::fs::create_dir(&dir).unwrap();
        let mut other = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(lock_file(&dir))
            .unwrap();
        other.write_all(b"4242").unwrap();
        let other = nix::fcntl::Flock::lock(other, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        match claim(&dir, false) {
            Err(StoreError::InUse { holder, .. }) => assert_eq!(holder, "4242"),
            other => panic!("{other:?}"),
        }
        drop(other);
        assert_eq!(claim(&dir, false).unwrap(), Claim::New);
        assert_eq!(claim(&dir, false).unwrap(), Claim::Shared);
        let pid = std::fs::read_to_string(lock_file(&dir)).unwrap();
        assert_eq!(pid, std::process::id().to_string());
        set_owns_mount(&dir);
        assert!(owns_mount(&dir));
        let mut unmounted = 0;
        release(&dir, |_| {
            unmounted += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(unmounted, 0, "another user of this process still uses it");
        release(&dir, |_| {
            unmounted += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(unmounted, 1);
        assert!(!owns_mount(&dir));
        // Released: another process could take it now.
        let again = std::fs::File::open(lock_file(&dir)).unwrap();
        assert!(
            nix::fcntl::Flock::lock(again, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
        );
    }

    #[test]
    fn the_first_state_dir_owns_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("roots");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for d in [&dir, &a, &b] {
            std::fs::create_dir(d).unwrap();
        }
        assert_eq!(read_owner(&dir).unwrap(), None);
        check_or_record_owner(&dir, &a).unwrap();
        // Another spelling of the same directory is the same owner.
        check_or_record_owner(&dir, &tmp.path().join("b/../a")).unwrap();
        assert_eq!(read_owner(&dir).unwrap(), Some(owner_key(&a)));
        match check_or_record_owner(&dir, &b) {
            Err(e @ StoreError::Foreign { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&a.display().to_string()), "{msg}");
                assert!(msg.contains("root_store_path"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }
}
