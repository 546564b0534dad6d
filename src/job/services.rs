//! The trace side of a job's services: the wait's warnings and `CI_DEBUG_SERVICES` logs. The
//! waiting itself is the backend's ([`crate::isolation::JobEnvironment::wait_for_services`]).
//! Everything goes through the [`JobLog`], so service logs are masked like all trace output.

use super::vars::Variables;
use crate::isolation::{ServiceLog, ServiceWarning};
use crate::trace::JobLog;

/// How many lines of each service's log `CI_DEBUG_SERVICES` puts in the trace at the end of
/// the job (the trace has its own size limit; a chatty database should not use all of it).
pub const DEBUG_LOG_LINES: usize = 10_000;

/// Whether `CI_DEBUG_SERVICES` is on; read like Go's `strconv.ParseBool`, as gitlab-runner does.
pub fn debug_services(vars: &Variables) -> bool {
    matches!(
        vars.get("CI_DEBUG_SERVICES").map(str::trim),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True")
    )
}

/// The line before the wait.
pub fn log_waiting(log: &JobLog, timeout: std::time::Duration) {
    log.line(&format!(
        "Waiting for services to be up and running (timeout {} seconds)...",
        timeout.as_secs()
    ));
}

/// A service that did not come up: a section with the health check's error and the tail of
/// the service's log, as gitlab-runner prints it. The job goes on.
pub fn log_warning(log: &JobLog, index: usize, w: &ServiceWarning) {
    let ports = crate::isolation::services::join_ports(&w.ports);
    log.section_start(
        &format!("service_{index}_warning"),
        &format!(
            "*** WARNING: Service {} ({}) probably didn't start properly.",
            w.service, w.container
        ),
        false,
    );
    if !ports.is_empty() {
        log.line(&format!("Exposed TCP port(s): {ports}"));
    }
    log.line("");
    log.line("Health check error:");
    log.line(&w.error);
    log.line("");
    log.line("Service container logs:");
    write_prefixed(log, None, &w.logs);
    log.line("");
    log.line("*********");
    log.section_end(&format!("service_{index}_warning"));
}

/// `CI_DEBUG_SERVICES`: every service's log, each line prefixed with the service's name.
pub fn log_service_logs(log: &JobLog, logs: &[ServiceLog]) {
    if logs.is_empty() {
        return;
    }
    log.section_start("service_logs", "Service logs (CI_DEBUG_SERVICES)", true);
    for l in logs {
        write_prefixed(log, Some(&l.service), &l.logs);
    }
    log.section_end("service_logs");
}

fn write_prefixed(log: &JobLog, service: Option<&str>, text: &str) {
    for line in text.lines() {
        match service {
            Some(s) => log.line(&format!("[service:{s}] {line}")),
            None => log.line(line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{BufferSink, LogOptions};
    use std::sync::Arc;

    fn vars(value: &str) -> Variables {
        let mut v = Variables::default();
        v.push("CI_DEBUG_SERVICES", value);
        v
    }

    #[test]
    fn debug_services_reads_like_parse_bool() {
        assert!(debug_services(&vars("true")));
        assert!(debug_services(&vars("1")));
        assert!(!debug_services(&vars("false")));
        assert!(!debug_services(&vars("yes")));
        assert!(!debug_services(&Variables::default()));
    }

    #[test]
    fn warning_names_service_port_and_masked_logs() {
        let sink = Arc::new(BufferSink::new());
        let log = JobLog::new(
            sink.clone(),
            LogOptions {
                masked_values: vec!["hunter2secret".into()],
                ..LogOptions::default()
            },
        );
        log_warning(
            &log,
            0,
            &ServiceWarning {
                service: "db".into(),
                container: "ir-r-1-svc-0".into(),
                ports: vec![5432],
                error: "no connection to port 5432 within 3s".into(),
                logs: "starting\npassword hunter2secret\n".into(),
            },
        );
        log.finish();
        let text = sink.text();
        assert!(text.contains("Service db (ir-r-1-svc-0) probably didn't start properly"));
        assert!(text.contains("Exposed TCP port(s): 5432"));
        assert!(text.contains("no connection to port 5432 within 3s"));
        assert!(text.contains("starting"));
        assert!(!text.contains("hunter2secret"), "{text}");
    }
}
