//! The root store in tests: a guard that leaves no mount or loop device of the host behind.

use std::path::{Path, PathBuf};

/// Removes the test's containers (they hold the job roots' mounts), unmounts every job root
/// and the store: a failed test must not keep a loop device of the host.
pub struct StoreGuard {
    /// The store directory (`isolation::golden::store_dir`).
    pub dir: PathBuf,
    /// The scope's runner id: its containers are removed first.
    pub runner_id: String,
}

impl Drop for StoreGuard {
    fn drop(&mut self) {
        let label = format!("label=io.isolated-runner.runner={}", self.runner_id);
        if let Ok(o) = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-fv"])
                    .args(&ids)
                    .output();
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.dir.join("mnt")) {
            for e in rd.flatten() {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(e.path())
                    .output();
            }
        }
        if is_mounted(&self.dir) {
            let _ = std::process::Command::new("umount").arg(&self.dir).output();
        }
    }
}

/// Whether `dir` is a mount point (its own line in this process's mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    mount_line(dir).is_some()
}

/// The line of this process's mountinfo whose mount point is `dir` (options included).
pub fn mount_line(dir: &Path) -> Option<String> {
    let want = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .map(str::to_string)
}
