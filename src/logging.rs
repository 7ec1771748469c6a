//! tracing setup: text by default, JSON on request; `SWITCHYARD_LOG` (an EnvFilter) overrides
//! the level. pingora's `log` records come through the same subscriber.

use tracing_subscriber::EnvFilter;

use crate::core::config::LogFormat;

pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| {
        // pingora's connection pool logs a benign race (cloudflare/pingora#201) at ERROR for
        // every pooled upstream connection it discards: noise at an edge.
        EnvFilter::new(format!(
            "{level},pingora_core::server=warn,pingora_core::services=warn,pingora_core::connectors=off"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}
