//! Bash script generation, like gitlab-runner's bash shell: `set -eo pipefail`, each command
//! echoed as `$ cmd` in bold green before it runs, all in one shell per stage.

use crate::trace::{ANSI_BOLD_GREEN, ANSI_RESET};

/// Quotes `s` for bash with single quotes.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Quotes `s` as a bash ANSI-C string (`$'…'`), which can hold escapes and newlines.
pub fn ansi_c_quote(s: &str) -> String {
    let mut out = String::from("$'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x1b' => out.push_str("\\e"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The shell prologue every stage starts with.
pub fn prologue() -> String {
    "set -eo pipefail\nset +o noclobber\n".to_string()
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
    script.push_str(&format!("echo {}\n", ansi_c_quote(&shown)));
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
        assert_eq!(ansi_c_quote("a'b\n\x1b"), "$'a\\'b\\n\\e'");
    }

    #[test]
    fn multi_line_commands_are_echoed_collapsed() {
        assert_eq!(echo_text("echo a"), "$ echo a");
        assert_eq!(
            echo_text("if true; then\n  echo a\nfi\n"),
            "$ if true; then # collapsed multi-line command"
        );
        let s = user_script("/b/p", &["echo hi".into()]);
        assert!(s.starts_with("set -eo pipefail\nset +o noclobber\ncd /b/p\n"));
        assert!(
            s.contains("echo $'\\e[32;1m$ echo hi\\e[0;m'\necho hi\n"),
            "{s}"
        );
    }
}
