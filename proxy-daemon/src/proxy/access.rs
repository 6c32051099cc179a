//! Access logs, as ECS Service Connect's `accessLogConfiguration` asks for
//! them: one line per HTTP request, TEXT or JSON, the path without its
//! query string unless `includeQueryParameters` is ENABLED.
//!
//! A task's requests are logged when its service has the configuration
//! (the egress side); requests that arrive at an ingress listener when the
//! target service has it. Lines go to the daemon's stdout (journald keeps
//! them apart from its stderr logs) through a bounded queue and a writer
//! thread, so a slow reader never holds up a request; lines that do not fit
//! are counted (`knit_access_log_dropped_total`), not waited for.
use std::{
    io::Write,
    sync::mpsc::{Receiver, SyncSender, TrySendError},
    time::{Duration, SystemTime},
};

use prometheus_client::metrics::counter::Counter;
use proxy_config::{AccessLogFormat, AccessLogSpec};
use serde_json::json;

/// Lines waiting for the writer at most.
const QUEUE: usize = 8192;

/// Who sent a request: the source task's service and its configuration.
#[derive(Debug)]
pub struct Source {
    pub service: String,
    pub access_log: Option<AccessLogSpec>,
}

/// A task's connection to the egress listener: who sends, and the service
/// graph's counter of its edge, looked up once per connection.
#[derive(Debug)]
pub struct Client {
    pub source: std::sync::Arc<Source>,
    pub edge: Counter,
    /// Its series for the target it dialed.
    pub target: crate::metrics::ClientCounters,
}

/// One request, as far as it is known when it starts.
#[derive(Debug)]
pub struct Record {
    pub spec: AccessLogSpec,
    pub started: SystemTime,
    pub source: String,
    pub target_service: String,
    pub target_discovery: String,
    pub direction: &'static str,
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    pub request_bytes: u64,
    pub status: u16,
    pub retries: u32,
    pub endpoint: String,
    /// Response head received.
    pub upstream: Duration,
}

impl Record {
    /// The line for the log, given the response's body bytes and the whole
    /// duration.
    fn line(&self, response_bytes: u64, total: Duration) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let time = humantime::format_rfc3339_millis(self.started);
        match self.spec.format {
            AccessLogFormat::Json => json!({
                "start_time": time.to_string(),
                "direction": self.direction,
                "source_service": self.source,
                "target_service": self.target_service,
                "target_discovery_name": self.target_discovery,
                "method": self.method,
                "path": self.path,
                "protocol": self.protocol,
                "response_code": self.status,
                "bytes_received": self.request_bytes,
                "bytes_sent": response_bytes,
                "duration_ms": (ms(total) * 1000.0).round() / 1000.0,
                "upstream_ms": (ms(self.upstream) * 1000.0).round() / 1000.0,
                "retries": self.retries,
                "upstream_host": self.endpoint,
            })
            .to_string(),
            AccessLogFormat::Text => format!(
                "[{time}] \"{} {} {}\" {} {} {} {:.3} {:.3} retries={} \"{}\" -> \"{}\" ({}) {} {}",
                self.method,
                self.path,
                self.protocol,
                self.status,
                self.request_bytes,
                response_bytes,
                ms(total),
                ms(self.upstream),
                self.retries,
                self.source,
                self.target_service,
                self.target_discovery,
                if self.endpoint.is_empty() {
                    "-"
                } else {
                    &self.endpoint
                },
                self.direction,
            ),
        }
    }
}

/// The path as logged: without the query string unless asked.
pub fn path(uri: &hyper::Uri, include_query: bool) -> String {
    match (include_query, uri.path_and_query()) {
        (true, Some(pq)) => pq.as_str().to_string(),
        _ => uri.path().to_string(),
    }
}

/// The queue to the writer thread.
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: Counter,
}

impl AccessLog {
    /// Start the writer thread (stdout); `dropped` counts lost lines.
    pub fn start(dropped: Counter) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let _ = std::thread::Builder::new()
            .name("knit-access-log".into())
            .spawn(move || write_lines(rx));
        Self { tx, dropped }
    }

    /// Log a finished request.
    pub fn emit(&self, record: &Record, response_bytes: u64, total: Duration) {
        match self.tx.try_send(record.line(response_bytes, total)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

fn write_lines(rx: Receiver<String>) {
    let stdout = std::io::stdout();
    while let Ok(first) = rx.recv() {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{first}");
        // What else is queued goes in the same write.
        while let Ok(more) = rx.try_recv() {
            let _ = writeln!(out, "{more}");
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(format: AccessLogFormat) -> Record {
        Record {
            spec: AccessLogSpec {
                format,
                include_query: false,
            },
            started: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            source: "client".into(),
            target_service: "web".into(),
            target_discovery: "web".into(),
            direction: "egress",
            method: "GET".into(),
            path: "/a".into(),
            protocol: "HTTP/1.1",
            request_bytes: 3,
            status: 200,
            retries: 1,
            endpoint: "127.0.0.1:9".into(),
            upstream: Duration::from_micros(1500),
        }
    }

    #[test]
    fn json_and_text_lines() -> Result<(), serde_json::Error> {
        let j: serde_json::Value =
            serde_json::from_str(&record(AccessLogFormat::Json).line(5, Duration::from_millis(2)))?;
        assert_eq!(j["start_time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(j["response_code"], 200);
        assert_eq!(j["bytes_sent"], 5);
        assert_eq!(j["duration_ms"], 2.0);
        assert_eq!(j["retries"], 1);
        let t = record(AccessLogFormat::Text).line(5, Duration::from_millis(2));
        assert_eq!(
            t,
            "[2023-11-14T22:13:20.123Z] \"GET /a HTTP/1.1\" 200 3 5 2.000 1.500 retries=1 \"client\" -> \"web\" (web) 127.0.0.1:9 egress"
        );
        Ok(())
    }

    #[test]
    fn query_strings_are_dropped_unless_asked() {
        let uri: hyper::Uri = "/p/q?token=secret&x=1".parse().unwrap_or_default();
        assert_eq!(path(&uri, false), "/p/q");
        assert_eq!(path(&uri, true), "/p/q?token=secret&x=1");
    }
}
