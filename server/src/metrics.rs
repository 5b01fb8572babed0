//! Metrics for Prometheus: counters and gauges the server updates as it
//! works (atomics: a message costs a few atomic additions, nothing is
//! formatted until a scrape), the process collector (CPU, memory,
//! descriptors), and a small HTTP server on `metrics.listen` that answers
//! `GET /metrics` (the text exposition format, by the `prometheus` crate)
//! and `GET /healthz` (200 once the sockets are bound, 503 while shutting
//! down). No label is ever a key, an identity or a uuid.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use pantry_shared::security::ServerPort;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use slog::Logger;

/// Why a handshake was rejected (the `reason` label).
#[derive(Debug, Clone, Copy)]
pub enum Rejection {
    UnknownKey,
    MechanismMismatch,
    ClosedDuringHandshake,
    Revoked,
    /// A cryptographic error: the peer has the wrong server public key.
    WrongServerKey,
}

/// Why a message was refused or dropped (the `reason` label).
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    NotAuthorized,
    SpoofedSender,
    UnknownCommand,
    UnknownClient,
    RevokedKey,
    Limits,
    RegistrationRefused,
    AuditLog,
}

impl Refusal {
    const ALL: [Refusal; 8] = [
        Refusal::NotAuthorized,
        Refusal::SpoofedSender,
        Refusal::UnknownCommand,
        Refusal::UnknownClient,
        Refusal::RevokedKey,
        Refusal::Limits,
        Refusal::RegistrationRefused,
        Refusal::AuditLog,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::NotAuthorized => "not authorized",
            Refusal::SpoofedSender => "spoofed sender",
            Refusal::UnknownCommand => "unknown command type",
            Refusal::UnknownClient => "unknown client",
            Refusal::RevokedKey => "revoked key",
            Refusal::Limits => "limits",
            Refusal::RegistrationRefused => "registration refused",
            Refusal::AuditLog => "audit log",
        }
    }

    /// The label for a refusal or drop reason as the dispatcher words it.
    pub fn of(reason: &str) -> Refusal {
        if reason.contains("spoofed") {
            Refusal::SpoofedSender
        } else if reason.starts_with("unknown command type") {
            Refusal::UnknownCommand
        } else if reason.starts_with("unknown client") || reason.contains("without an authenticated key") {
            Refusal::UnknownClient
        } else if reason.starts_with("revoked") {
            Refusal::RevokedKey
        } else if reason.starts_with("too many") || reason.contains("already in use") {
            Refusal::Limits
        } else if reason.contains("audit log") {
            Refusal::AuditLog
        } else {
            Refusal::NotAuthorized
        }
    }
}

/// Every series, its children resolved once (a label lookup is a lock and a
/// hash; an `inc` on a resolved child is one atomic addition).
pub struct Metrics {
    registry: Registry,
    pub requests_in: IntCounter,
    pub answers_in: IntCounter,
    pub files_in: IntCounter,
    pub answers_out: IntCounter,
    pub publishes_out: IntCounter,
    /// Requests sent to an agent over its own DEALER connection.
    pub deliveries_out: IntCounter,
    pub files_out: IntCounter,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub handshakes_accepted: IntCounter,
    rejected: [IntCounter; 5],
    pub clients_online: IntGauge,
    pub clients_offline: IntGauge,
    connections: [IntGauge; 3],
    pub requests_pending: IntGauge,
    pub request_duration: Histogram,
    refusals: [IntCounter; 8],
    queued_bytes: [IntGauge; 2],
    pub file_transfer_bytes: IntCounter,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c);
        let build = IntGaugeVec::new(Opts::new("pantry_build_info", "The server's version."), &["version"])?;
        build.with_label_values(&[pantry_shared::VERSION]).set(1);
        reg(Box::new(build))?;

        let messages = IntCounterVec::new(
            Opts::new("pantry_messages_total", "Messages received and sent, by kind."),
            &["direction", "kind"],
        )?;
        reg(Box::new(messages.clone()))?;
        let bytes = IntCounterVec::new(
            Opts::new("pantry_message_bytes_total", "Bytes of messages received and sent."),
            &["direction"],
        )?;
        reg(Box::new(bytes.clone()))?;
        let handshakes = IntCounterVec::new(
            Opts::new("pantry_handshakes_total", "CURVE handshakes, accepted or rejected (with the reason)."),
            &["result", "reason"],
        )?;
        reg(Box::new(handshakes.clone()))?;
        let clients = IntGaugeVec::new(Opts::new("pantry_clients", "Registered clients, by state."), &["state"])?;
        reg(Box::new(clients.clone()))?;
        let connections =
            IntGaugeVec::new(Opts::new("pantry_connections", "Open connections, by server socket."), &["socket"])?;
        reg(Box::new(connections.clone()))?;
        let requests_pending =
            IntGauge::new("pantry_requests_pending", "Requests forwarded to clients that await answers.")?;
        reg(Box::new(requests_pending.clone()))?;
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "pantry_request_duration_seconds",
                "From a forwarded request to its last answer (or its expiry).",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 600.0]),
        )?;
        reg(Box::new(request_duration.clone()))?;
        let refusals = IntCounterVec::new(
            Opts::new("pantry_refusals_total", "Messages refused or dropped, by reason."),
            &["reason"],
        )?;
        reg(Box::new(refusals.clone()))?;
        let queued = IntGaugeVec::new(
            Opts::new("pantry_queued_bytes", "Bytes waiting for peers that do not read (the per-peer backlogs)."),
            &["queue"],
        )?;
        reg(Box::new(queued.clone()))?;
        let file_transfer_bytes =
            IntCounter::new("pantry_file_transfer_bytes_total", "Bytes of uploads relayed by the file service.")?;
        reg(Box::new(file_transfer_bytes.clone()))?;
        reg(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;

        let socket = |port: ServerPort| connections.with_label_values(&[port.name()]);
        let rejected = |reason| handshakes.with_label_values(&["rejected", reason]);
        Ok(Metrics {
            requests_in: messages.with_label_values(&["in", "request"]),
            answers_in: messages.with_label_values(&["in", "answer"]),
            files_in: messages.with_label_values(&["in", "file"]),
            answers_out: messages.with_label_values(&["out", "answer"]),
            publishes_out: messages.with_label_values(&["out", "publish"]),
            deliveries_out: messages.with_label_values(&["out", "delivery"]),
            files_out: messages.with_label_values(&["out", "file"]),
            bytes_in: bytes.with_label_values(&["in"]),
            bytes_out: bytes.with_label_values(&["out"]),
            handshakes_accepted: handshakes.with_label_values(&["accepted", ""]),
            rejected: [
                rejected("unknown key"),
                rejected("mechanism mismatch"),
                rejected("closed during handshake"),
                rejected("revoked"),
                rejected("wrong server key"),
            ],
            clients_online: clients.with_label_values(&["online"]),
            clients_offline: clients.with_label_values(&["offline"]),
            connections: [socket(ServerPort::Publish), socket(ServerPort::Receive), socket(ServerPort::Files)],
            requests_pending,
            request_duration,
            refusals: Refusal::ALL.map(|r| refusals.with_label_values(&[r.label()])),
            queued_bytes: [queued.with_label_values(&["receive"]), queued.with_label_values(&["files"])],
            file_transfer_bytes,
            registry,
        })
    }

    pub fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].inc();
    }

    pub fn refused(&self, why: Refusal) {
        self.refusals[why as usize].inc();
    }

    pub fn connections(&self, port: ServerPort) -> &IntGauge {
        &self.connections[match port {
            ServerPort::Publish => 0,
            ServerPort::Receive => 1,
            ServerPort::Files => 2,
        }]
    }

    pub fn queued_bytes(&self, port: ServerPort) -> &IntGauge {
        &self.queued_bytes[usize::from(port == ServerPort::Files)]
    }

    /// The exposition text.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding text into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Serves `/metrics` and `/healthz` on `listen` ([`crate::metrics_http`]).
pub fn serve(
    listen: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
    log: Logger,
) -> anyhow::Result<JoinHandle<()>> {
    let pages = crate::metrics_http::Pages {
        metrics: Box::new(move || metrics.encode()),
        content_type: TextEncoder::new().format_type().to_owned(),
        healthy,
    };
    crate::metrics_http::serve(listen, pages, log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exposed_without_identities() {
        let m = Metrics::new().unwrap();
        m.requests_in.inc();
        m.rejected(Rejection::UnknownKey);
        m.refused(Refusal::of("message with a spoofed sender"));
        m.request_duration.observe(0.02);
        let text = String::from_utf8(m.encode()).unwrap();
        for series in [
            "pantry_build_info{version=",
            "pantry_messages_total{direction=\"in\",kind=\"request\"} 1",
            "pantry_handshakes_total{reason=\"unknown key\",result=\"rejected\"} 1",
            "pantry_refusals_total{reason=\"spoofed sender\"} 1",
            "pantry_request_duration_seconds_bucket",
            "pantry_clients{state=\"online\"}",
            "pantry_connections{socket=\"ROUTER\"}",
            "pantry_queued_bytes{queue=\"files\"}",
            "pantry_file_transfer_bytes_total",
            "process_open_fds",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
        assert!(matches!(Refusal::of("too many requests awaiting answers"), Refusal::Limits));
        assert!(matches!(Refusal::of("not authorized: Status needs an admin key"), Refusal::NotAuthorized));
    }
}
