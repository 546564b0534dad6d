//! Which shell runs a script in a container: bash when the image has it, else sh, as
//! gitlab-runner's docker executor chooses (shells/bash.go). The generated scripts are POSIX sh,
//! so either shell runs them; bash is preferred only because users' `script:` lines often use
//! bash syntax on images that have it.

/// Where a shell is looked for, in order of preference (gitlab-runner's list).
const SHELLS: [&str; 7] = [
    "/usr/local/bin/bash",
    "/usr/bin/bash",
    "/bin/bash",
    "/usr/local/bin/sh",
    "/usr/bin/sh",
    "/bin/sh",
    "/busybox/sh",
];

/// The detection script run by the image's `sh`: it replaces itself with the first shell found,
/// passing its arguments (the script path) on.
fn detect_script() -> String {
    let mut s = String::from("for shell in");
    for path in SHELLS {
        s.push(' ');
        s.push_str(path);
    }
    s.push_str(
        "; do\n  if [ -x \"$shell\" ]; then exec \"$shell\" \"$@\"; fi\ndone\n\
         echo 'isolated-runner: the image has neither bash nor sh (looked in /usr/local/bin, \
         /usr/bin, /bin and /busybox)' >&2\nexit 1\n",
    );
    s
}

/// The container command that runs the script file at `script_path` (a path inside the
/// container) with the detected shell. `sh -c` is what every Unix image can start; the `sh`
/// after the script is `$0` of the detection script, so `"$@"` holds only the path.
pub fn command(script_path: &str) -> Vec<String> {
    vec![
        "sh".to_string(),
        "-c".to_string(),
        detect_script(),
        "sh".to_string(),
        script_path.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_bash_and_passes_the_script_path() {
        let cmd = command("/tmp/job/script-1-build.sh");
        assert_eq!(cmd[..2], ["sh", "-c"]);
        assert_eq!(cmd[3..], ["sh", "/tmp/job/script-1-build.sh"]);
        let detect = &cmd[2];
        let bash = detect.find("/bin/bash").expect("bash is looked for");
        let sh = detect.find("/bin/sh ").expect("sh is looked for");
        assert!(bash < sh, "{detect}");
    }

    /// The detection script runs under the host's sh and execs the first shell it finds with the
    /// script path as its only argument.
    #[test]
    fn detection_runs_the_script_with_a_shell() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("s.sh");
        std::fs::write(&script, "echo \"ran with $# args: $0\"\nexit 7\n").expect("write");
        let cmd = command(&script.to_string_lossy());
        let out = std::process::Command::new("/bin/sh")
            .args(&cmd[1..])
            .output()
            .expect("sh runs");
        assert_eq!(out.status.code(), Some(7));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.trim(),
            format!("ran with 0 args: {}", script.display())
        );
    }
}
