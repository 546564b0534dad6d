//! The bench's trace sink: it timestamps section spans and the first script line as the
//! job's trace passes, and tells the fault hook when the fault point's line is written.

use super::*;

/// Timestamps the trace: section spans, and the first script line.
pub(super) struct BenchSink {
    pub(super) start: Instant,
    pub(super) state: Mutex<SinkState>,
}

pub(super) struct SinkState {
    pub(super) text: Vec<u8>,
    pub(super) scanned: usize,
    pub(super) open: Vec<(String, Instant)>,
    pub(super) stages: BTreeMap<String, f64>,
    pub(super) in_step_script: bool,
    pub(super) first_line: Option<Instant>,
    /// The fault point's line; `None`: the first script line is the fault point.
    pub(super) fault_marker: Option<&'static str>,
    /// Where the search for the fault marker resumes.
    pub(super) marker_scanned: usize,
    /// Told once, at the fault point.
    pub(super) notify: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The echo of a command, as `job::script` writes it.
pub(super) const ECHO_START: &[u8] = b"\x1b[32;1m$ ";

impl BenchSink {
    pub(super) fn new(
        start: Instant,
        notify: tokio::sync::oneshot::Sender<()>,
        fault_marker: Option<&'static str>,
    ) -> Self {
        BenchSink {
            start,
            state: Mutex::new(SinkState {
                text: Vec::new(),
                scanned: 0,
                open: Vec::new(),
                stages: BTreeMap::new(),
                in_step_script: false,
                first_line: None,
                fault_marker,
                marker_scanned: 0,
                notify: Some(notify),
            }),
        }
    }

    pub(super) fn results(&self) -> (Option<Duration>, BTreeMap<String, f64>) {
        let Ok(st) = self.state.lock() else {
            return (None, BTreeMap::new());
        };
        let mut stages = st.stages.clone();
        let text = String::from_utf8_lossy(&st.text);
        parse_backend_breakdown(&text, &mut stages);
        (st.first_line.map(|t| t - self.start), stages)
    }

    pub(super) fn text(&self) -> String {
        self.state
            .lock()
            .map(|st| String::from_utf8_lossy(&st.text).into_owned())
            .unwrap_or_default()
    }

    pub(super) fn tail(&self, n: usize) -> String {
        let Ok(st) = self.state.lock() else {
            return String::new();
        };
        let from = st.text.len().saturating_sub(n);
        String::from_utf8_lossy(&st.text[from..])
            .replace('\r', "\n")
            .replace("\x1b[0K", "")
    }
}

impl TraceSink for BenchSink {
    fn append(&self, data: &[u8]) {
        let now = Instant::now();
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.text.extend_from_slice(data);
        // Markers end with '\r'; scan complete ones only, from where the last scan stopped.
        loop {
            let from = st.scanned;
            let rest = &st.text[from..];
            let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
                break;
            };
            let chunk = String::from_utf8_lossy(&rest[..cr]).into_owned();
            // Before the marker: maybe the first script line.
            let marker_at = chunk
                .rfind("section_start:")
                .or_else(|| chunk.rfind("section_end:"));
            let body = &chunk[..marker_at.unwrap_or(chunk.len())];
            check_first_line(&mut st, body.as_bytes(), now);
            if let Some(at) = marker_at {
                handle_marker(&mut st, &chunk[at..], now);
            }
            st.scanned = from + cr + 1;
        }
        // Text after the last '\r' (script output) may hold the first line already.
        let from = st.scanned;
        let rest = st.text[from..].to_vec();
        check_first_line(&mut st, &rest, now);
        check_fault_marker(&mut st);
    }
}

/// Tells the hook once a whole output line equals the fault marker. The command's own echo
/// (`$ echo "<marker>"`) names the marker too, but never as a whole line.
pub(super) fn check_fault_marker(st: &mut SinkState) {
    let Some(marker) = st.fault_marker else {
        return;
    };
    if st.notify.is_none() {
        return;
    }
    // Only complete lines; resume at the start of the last incomplete one.
    let Some(end) = st.text.iter().rposition(|&b| b == b'\n') else {
        return;
    };
    let from = st.marker_scanned;
    if end < from {
        // No new complete line since the last look.
        return;
    }
    let found = st.text[from..end]
        .split(|&b| b == b'\n')
        .any(|line| line.strip_suffix(b"\r").unwrap_or(line) == marker.as_bytes());
    st.marker_scanned = end + 1;
    if found && let Some(n) = st.notify.take() {
        // The hook may be gone already (the job ended); nothing to tell then.
        let _ = n.send(());
    }
}

pub(super) fn check_first_line(st: &mut SinkState, body: &[u8], now: Instant) {
    if st.in_step_script
        && st.first_line.is_none()
        && body.windows(ECHO_START.len()).any(|w| w == ECHO_START)
    {
        st.first_line = Some(now);
        if st.fault_marker.is_none()
            && let Some(n) = st.notify.take()
        {
            // Nobody listens unless a hook is set.
            let _ = n.send(());
        }
    }
}

pub(super) fn handle_marker(st: &mut SinkState, marker: &str, now: Instant) {
    // section_start:<ts>:<name>[opts]  /  section_end:<ts>:<name>
    let mut parts = marker.splitn(3, ':');
    let kind = parts.next().unwrap_or("");
    let _ts = parts.next();
    let name = parts
        .next()
        .unwrap_or("")
        .split('[')
        .next()
        .unwrap_or("")
        .to_string();
    if kind == "section_start" {
        st.in_step_script = name == "step_script";
        st.open.push((name, now));
    } else if kind == "section_end" {
        if name == "step_script" {
            st.in_step_script = false;
        }
        if let Some(pos) = st.open.iter().rposition(|(n, _)| *n == name) {
            let (n, t) = st.open.remove(pos);
            *st.stages.entry(n).or_insert(0.0) += (now - t).as_secs_f64();
        }
    }
}

/// What the dind backend said about the job's warm data root (`data_root = "project"`), as a
/// short note: whether the job got the warm root, a new (cold) one, or missed it and ran on an
/// ephemeral root (which makes a build-warm sample a cold one).
pub(super) fn warm_root_note(trace: &str) -> Option<String> {
    trace.lines().find_map(|line| {
        if let Some(rest) = line.split("Using the warm data root ").nth(1) {
            let state = rest
                .rsplit_once('(')
                .and_then(|(_, s)| s.split(')').next())
                .unwrap_or("?");
            Some(format!("data root: {state}"))
        } else if line.contains("this job uses an ephemeral one") {
            let why = line
                .split("warm data root is ")
                .nth(1)
                .and_then(|r| r.split("; this job").next())
                .unwrap_or("unavailable");
            Some(format!(
                "data root: warm root missed ({why}), ran ephemeral"
            ))
        } else {
            None
        }
    })
}

/// Reads the dind backend's prepare breakdown (`[stage 1.23s, stage 0.04s]` at the end of the
/// "Job docker daemon ready" line) into `dind_*` stages.
pub(super) fn parse_backend_breakdown(text: &str, stages: &mut BTreeMap<String, f64>) {
    for line in text
        .lines()
        .filter(|l| l.contains("Job docker daemon ready"))
    {
        let (Some(a), Some(b)) = (line.rfind('['), line.rfind(']')) else {
            continue;
        };
        if b <= a {
            continue;
        }
        for item in line[a + 1..b].split(',') {
            let mut it = item.split_whitespace();
            if let (Some(name), Some(v)) = (it.next(), it.next())
                && let Ok(secs) = v.trim_end_matches('s').parse::<f64>()
            {
                stages.insert(format!("dind_{name}"), secs);
            }
        }
    }
}

/// (job containers, sidecar) peaks of one job, bytes.
pub(super) type Peaks = (Option<u64>, Option<u64>);
