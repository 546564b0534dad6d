//! The job log: what GitLab shows as the job's trace.
//!
//! A [`TraceSink`] receives bytes that are already masked and ready to show: the GitLab uploader
//! (`gitlab::trace`) for `runner run`, the terminal for `runner exec`, a buffer in tests. The
//! masking, section markers and size limit sit in front of it, in this module ([`JobLog`]).

pub mod mask;

pub use mask::{DEFAULT_TOKEN_PREFIXES, MASK, MIN_MASKED_LEN, Masker};

use std::sync::{Arc, Mutex};

/// Where finished trace bytes go. Implementations must not block: they buffer and ship the bytes
/// on their own schedule.
pub trait TraceSink: Send + Sync {
    /// Appends bytes to the trace.
    fn append(&self, data: &[u8]);
}

/// ANSI: bold green, used for echoed commands.
pub const ANSI_BOLD_GREEN: &str = "\x1b[32;1m";
/// ANSI: bold cyan, used for section headings.
pub const ANSI_BOLD_CYAN: &str = "\x1b[36;1m";
/// ANSI: bold red, used for errors.
pub const ANSI_BOLD_RED: &str = "\x1b[31;1m";
/// ANSI: yellow, used for warnings.
pub const ANSI_YELLOW: &str = "\x1b[0;33m";
/// ANSI: reset, as gitlab-runner writes it.
pub const ANSI_RESET: &str = "\x1b[0;m";
/// ANSI: erase to end of line; hides section markers in terminals.
pub const ANSI_CLEAR: &str = "\x1b[0K";

/// A [`TraceSink`] that keeps everything in memory (tests, `--print` modes).
#[derive(Debug, Default)]
pub struct BufferSink {
    data: Mutex<Vec<u8>>,
}

impl BufferSink {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything appended so far.
    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Everything appended so far, as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents()).into_owned()
    }
}

impl TraceSink for BufferSink {
    fn append(&self, data: &[u8]) {
        if let Ok(mut d) = self.data.lock() {
            d.extend_from_slice(data);
        }
    }
}

/// How a [`JobLog`] masks, limits and marks sections.
#[derive(Clone, Default)]
pub struct LogOptions {
    /// Values of masked variables (shorter than [`MIN_MASKED_LEN`] are ignored).
    pub masked_values: Vec<String>,
    /// Extra token prefixes (`features.token_mask_prefixes`); the defaults are always on.
    pub extra_prefixes: Vec<String>,
    /// Bytes after which output is dropped; 0 = no limit.
    pub output_limit: u64,
    /// Emit `section_start`/`section_end` markers (`features.trace_sections`).
    pub sections: bool,
}

impl std::fmt::Debug for LogOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogOptions")
            .field("masked_values", &self.masked_values.len())
            .field("extra_prefixes", &self.extra_prefixes)
            .field("output_limit", &self.output_limit)
            .field("sections", &self.sections)
            .finish()
    }
}

struct LogState {
    masker: Masker,
    written: u64,
    truncated: bool,
    open_sections: Vec<String>,
}

/// The job log in front of a [`TraceSink`]: masks secrets (also across chunk boundaries),
/// writes section markers and runner messages, and enforces `output_limit`.
///
/// Script output and runner messages go through one lock, so they reach the sink in the order
/// they were written.
pub struct JobLog {
    sink: Arc<dyn TraceSink>,
    state: Mutex<LogState>,
    limit: u64,
    sections: bool,
}

impl JobLog {
    /// A log writing to `sink`.
    pub fn new(sink: Arc<dyn TraceSink>, options: LogOptions) -> Self {
        let mut prefixes: Vec<String> = DEFAULT_TOKEN_PREFIXES
            .iter()
            .map(|s| s.to_string())
            .collect();
        prefixes.extend(options.extra_prefixes.iter().cloned());
        JobLog {
            sink,
            state: Mutex::new(LogState {
                masker: Masker::new(&options.masked_values, &prefixes),
                written: 0,
                truncated: false,
                open_sections: Vec::new(),
            }),
            limit: options.output_limit,
            sections: options.sections,
        }
    }

    /// Job output (stdout and stderr, in the order received).
    pub fn write(&self, data: &[u8]) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let masked = st.masker.push(data);
        self.emit(&mut st, &masked);
    }

    /// A runner message line (masked like everything else).
    pub fn line(&self, text: &str) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let mut masked = st.masker.finish();
        masked.extend(st.masker.push(text.as_bytes()));
        masked.extend(st.masker.push(b"\n"));
        masked.extend(st.masker.finish());
        self.emit(&mut st, &masked);
    }

    /// A bold cyan heading, like gitlab-runner's stage headings.
    pub fn heading(&self, text: &str) {
        self.line(&format!("{ANSI_BOLD_CYAN}{text}{ANSI_RESET}"));
    }

    /// A bold green informational line (`Job succeeded`).
    pub fn success(&self, text: &str) {
        self.line(&format!("{ANSI_BOLD_GREEN}{text}{ANSI_RESET}"));
    }

    /// A yellow `WARNING:` line.
    pub fn warning(&self, text: &str) {
        self.line(&format!("{ANSI_YELLOW}WARNING: {text}{ANSI_RESET}"));
    }

    /// A bold red `ERROR:` line.
    pub fn error(&self, text: &str) {
        self.line(&format!("{ANSI_BOLD_RED}ERROR: {text}{ANSI_RESET}"));
    }

    /// Opens a section with a heading; `collapsed` folds it in GitLab's UI.
    pub fn section_start(&self, name: &str, heading: &str, collapsed: bool) {
        if let Ok(mut st) = self.state.lock() {
            let mut bytes = st.masker.finish();
            if self.sections {
                let opts = if collapsed { "[collapsed=true]" } else { "" };
                bytes.extend(
                    format!("section_start:{}:{name}{opts}\r{ANSI_CLEAR}", unix_now()).into_bytes(),
                );
            }
            st.open_sections.push(name.to_string());
            self.emit(&mut st, &bytes);
        }
        self.heading(heading);
    }

    /// Closes a section (flushing any held-back output first).
    pub fn section_end(&self, name: &str) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let mut bytes = st.masker.finish();
        if let Some(pos) = st.open_sections.iter().rposition(|n| n == name) {
            st.open_sections.remove(pos);
        }
        if self.sections {
            bytes.extend(format!("section_end:{}:{name}\r{ANSI_CLEAR}", unix_now()).into_bytes());
        }
        self.emit(&mut st, &bytes);
    }

    /// Flushes held-back bytes and closes sections left open. Call once at the end of the job.
    pub fn finish(&self) {
        let open: Vec<String> = match self.state.lock() {
            Ok(st) => st.open_sections.clone(),
            Err(_) => return,
        };
        for name in open.iter().rev() {
            self.section_end(name);
        }
        if let Ok(mut st) = self.state.lock() {
            let bytes = st.masker.finish();
            self.emit(&mut st, &bytes);
        }
    }

    /// Bytes sent to the sink so far (including the truncation notice).
    pub fn bytes_written(&self) -> u64 {
        self.state.lock().map(|s| s.written).unwrap_or(0)
    }

    fn emit(&self, st: &mut LogState, bytes: &[u8]) {
        if bytes.is_empty() || st.truncated {
            return;
        }
        if self.limit > 0 && st.written + bytes.len() as u64 > self.limit {
            let room = (self.limit - st.written) as usize;
            let mut out = bytes[..room].to_vec();
            out.extend(
                format!(
                    "\n{ANSI_BOLD_RED}Job's log exceeded limit of {} bytes. Job execution will continue but no more output will be collected.{ANSI_RESET}\n",
                    self.limit
                )
                .into_bytes(),
            );
            st.written += out.len() as u64;
            st.truncated = true;
            self.sink.append(&out);
            return;
        }
        st.written += bytes.len() as u64;
        self.sink.append(bytes);
    }
}

/// Receives a script's stdout and stderr, interleaved in the order they were written. The
/// isolation backends write a job's output here; [`JobLog`] is the sink of a real job.
pub trait OutputSink: Send + Sync {
    /// Appends raw output.
    fn write(&self, data: &[u8]);
}

impl OutputSink for JobLog {
    fn write(&self, data: &[u8]) {
        JobLog::write(self, data);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(limit: u64) -> (Arc<BufferSink>, JobLog) {
        let sink = Arc::new(BufferSink::new());
        let log = JobLog::new(
            sink.clone(),
            LogOptions {
                masked_values: vec!["hunter2hunter2".into()],
                extra_prefixes: vec!["myco_".into()],
                output_limit: limit,
                sections: true,
            },
        );
        (sink, log)
    }

    #[test]
    fn masks_across_writes_and_in_runner_lines() {
        let (sink, log) = log(0);
        log.write(b"pw=hunter2h");
        log.write(b"unter2 tok=myco_abc123\n");
        log.line("runner says hunter2hunter2");
        log.finish();
        let t = sink.text();
        assert!(!t.contains("hunter2hunter2"), "{t}");
        assert!(t.contains("pw=[MASKED] tok=myco_[MASKED]\n"), "{t}");
        assert!(t.contains("runner says [MASKED]"), "{t}");
    }

    #[test]
    fn sections_have_markers_and_headings() {
        let (sink, log) = log(0);
        log.section_start("get_sources", "Getting source from Git repository", true);
        log.write(b"out\n");
        log.section_end("get_sources");
        let t = sink.text();
        assert!(t.contains("section_start:"), "{t}");
        assert!(t.contains(":get_sources[collapsed=true]\r\x1b[0K"), "{t}");
        assert!(
            t.contains("\x1b[36;1mGetting source from Git repository"),
            "{t}"
        );
        assert!(t.contains(":get_sources\r\x1b[0K"), "{t}");
    }

    #[test]
    fn output_limit_truncates_with_notice() {
        let (sink, log) = log(10);
        log.write(b"0123456789abcdef");
        log.write(b"more");
        log.finish();
        let t = sink.text();
        assert!(t.starts_with("0123456789\n"), "{t}");
        assert!(t.contains(
            "Job's log exceeded limit of 10 bytes. Job execution will continue but no more output will be collected."
        ));
        assert!(t.ends_with("collected.\x1b[0;m\n"), "{t:?}");
    }
}
