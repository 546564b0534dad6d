//! Script generation, like gitlab-runner's bash/sh shell: errexit (and pipefail where the shell
//! has it), each command echoed as `$ cmd` in bold green before it runs, all in one shell per
//! stage. Everything generated here is POSIX sh: the container runs it with bash when the image
//! has bash and with sh otherwise (`isolation::shell`), so no bash-only syntax may appear.

use crate::trace::{ANSI_BOLD_GREEN, ANSI_RESET};

/// Quotes `s` for sh with single quotes (which keep every byte but `'` as it is).
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The shell prologue every stage starts with. `pipefail` is not POSIX: bash and busybox sh have
/// it, dash did not for long, and `set` with an unknown option ends a POSIX shell, so it is asked
/// for only when `set -o` lists it (a builtin check, no `grep` needed in the image).
pub fn prologue() -> String {
    "case $(set -o) in *pipefail*) set -o pipefail ;; esac\nset -o errexit\nset +o noclobber\n"
        .to_string()
}

/// How a command is shown before it runs: its first line, with a note when it has more.
pub fn echo_text(cmd: &str) -> String {
    let trimmed = cmd.trim_end_matches('\n');
    let mut lines = trimmed.lines();
    let first = lines.next().unwrap_or("");
    if lines.next().is_some() {
        format!("$ {first} # collapsed multi-line command")
    } else {
        format!("$ {first}")
    }
}

/// Appends `cmd` to `script`, echoing it first.
pub fn push_command(script: &mut String, cmd: &str) {
    if cmd.trim().is_empty() {
        return;
    }
    let shown = format!("{ANSI_BOLD_GREEN}{}{ANSI_RESET}", echo_text(cmd));
    // printf, not echo: sh's echo may interpret backslashes in the command text.
    script.push_str(&format!("printf '%s\\n' {}\n", sh_quote(&shown)));
    script.push_str(cmd.trim_end_matches('\n'));
    script.push('\n');
}

/// Splits a config script (`pre_build_script` and friends, a multi-line string) into commands.
pub fn config_commands(s: &str) -> Vec<String> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// A user stage script: prologue, `cd` into the project, then each command echoed and run.
pub fn user_script(project_dir: &str, commands: &[String]) -> String {
    let mut s = prologue();
    s.push_str(&format!("cd {}\n", sh_quote(project_dir)));
    for c in commands {
        push_command(&mut s, c);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("abc/d.e"), "abc/d.e");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("a'b\n\x1b"), "'a'\\''b\n\x1b'");
    }

    /// The generated script runs under a POSIX sh that is not bash (the host's `/bin/sh`, dash on
    /// Debian): commands are echoed, variables expand, and the first failing command ends the
    /// script with its exit code.
    #[test]
    fn user_script_runs_under_posix_sh() {
        let dir = tempfile::tempdir().expect("temp dir");
        let project = dir.path().to_string_lossy().into_owned();
        let script = user_script(
            &project,
            &[
                "GREETING='hello  world'".into(),
                "echo \"got: $GREETING in $(pwd)\"".into(),
                "printf 'back\\\\slash\\n'".into(),
                "sh -c 'exit 42'".into(),
                "echo never".into(),
            ],
        );
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .output()
            .expect("sh runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(42),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("\x1b[32;1m$ echo \"got: $GREETING in $(pwd)\"\x1b[0;m\n"),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("got: hello  world in {project}\n")),
            "{stdout}"
        );
        assert!(stdout.contains("$ printf 'back\\\\slash\\n'"), "{stdout}");
        assert!(stdout.contains("back\\slash\n"), "{stdout}");
        assert!(stdout.contains("$ sh -c 'exit 42'"), "{stdout}");
        assert!(!stdout.contains("never\n"), "{stdout}");
    }

    #[test]
    fn multi_line_commands_are_echoed_collapsed() {
        assert_eq!(echo_text("echo a"), "$ echo a");
        assert_eq!(
            echo_text("if true; then\n  echo a\nfi\n"),
            "$ if true; then # collapsed multi-line command"
        );
        let s = user_script("/b/p", &["echo hi".into()]);
        assert!(s.starts_with(&prologue()), "{s}");
        assert!(s.contains("set +o noclobber\ncd /b/p\n"), "{s}");
        assert!(
            s.contains("printf '%s\\n' '\x1b[32;1m$ echo hi\x1b[0;m'\necho hi\n"),
            "{s}"
        );
    }
}
