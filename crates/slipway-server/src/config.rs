//! `[server]` of the configuration file: where the API listens and its network limits.

use std::time::Duration;

use serde::Deserialize;

use crate::ServerOptions;
use crate::preview::PreviewTimeouts;

/// `[server]`. Every timeout is a duration longer than zero.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// API, UI, webhooks and the preview router.
    pub listen: String,
    /// How long a client has to send a request's head (and, on a kept-alive connection, the
    /// next one) before its connection is closed.
    #[serde(deserialize_with = "slipway_core::duration::positive")]
    pub header_timeout: Duration,
    /// Most connections open at once; beyond it the oldest idle one is closed to make room.
    pub max_connections: usize,
    /// How long a request's body may take to arrive (past it, and the allowance of
    /// `body_min_rate`, the client gets `408` and the connection closes).
    #[serde(deserialize_with = "slipway_core::duration::positive")]
    pub body_timeout: Duration,
    /// Bytes per second a request body must average beyond `body_timeout`: each this many
    /// bytes received give it a second more; 0 makes `body_timeout` a hard limit.
    pub body_min_rate: u64,
    /// How long a write to a client that reads nothing may stall before the connection is
    /// closed.
    #[serde(deserialize_with = "slipway_core::duration::positive")]
    pub write_timeout: Duration,
    /// How long the preview router waits to connect to an application.
    #[serde(deserialize_with = "slipway_core::duration::positive")]
    pub preview_connect_timeout: Duration,
    /// How long the preview router waits for an application's response (its head); past it
    /// the client gets `504`.
    #[serde(deserialize_with = "slipway_core::duration::positive")]
    pub preview_timeout: Duration,
    /// Whether `slipway serve` runs its listener in a router process of its own
    /// (`slipway __router`) that outlives it, so that preview URLs keep answering while
    /// `serve` restarts; `serve --router` asks the same.
    pub router: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:7300".into(),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            body_timeout: Duration::from_secs(30),
            body_min_rate: 32 * 1024,
            write_timeout: Duration::from_secs(30),
            preview_connect_timeout: Duration::from_secs(5),
            preview_timeout: Duration::from_secs(60),
            router: false,
        }
    }
}

impl ServerConfig {
    /// The server's options as this section sets them (the rest at their defaults).
    pub fn options(&self) -> ServerOptions {
        ServerOptions {
            header_timeout: self.header_timeout,
            max_connections: self.max_connections.max(1),
            body_timeout: self.body_timeout,
            body_min_rate: self.body_min_rate,
            write_timeout: self.write_timeout,
            preview: PreviewTimeouts {
                connect: self.preview_connect_timeout,
                response: self.preview_timeout,
                // Half the connections at most: the other half stays for the API, the UI,
                // webhooks and health checks, however slowly applications answer.
                max_in_flight: (self.max_connections / 2).max(1),
            },
            ..ServerOptions::default()
        }
    }
}
