//! tracing setup: text by default, JSON on request; `SWITCHYARD_LOG` (an EnvFilter) overrides
//! the level. pingora's `log` records come through the same subscriber.
//!
//! Text logs are coloured only when stderr is a terminal and `NO_COLOR` is unset or empty
//! (https://no-color.org): a log file, a pipe or journald gets plain text, not escape codes.

use std::io::IsTerminal;

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
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_wanted(std::io::stderr().is_terminal(), no_color))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

/// Colours only for a person at a terminal who did not opt out.
fn colour_wanted(stderr_is_terminal: bool, no_color: bool) -> bool {
    stderr_is_terminal && !no_color
}

#[cfg(test)]
mod tests {
    use super::colour_wanted;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, false));
        assert!(!colour_wanted(true, true));
        assert!(!colour_wanted(false, false));
        assert!(!colour_wanted(false, true));
    }
}
