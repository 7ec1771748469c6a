//! The command line: global flags and one variant per verb. The doc comments are the help
//! text (`releasectl VERB --help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use switchyard::core::color::Color;

#[derive(Parser, Debug)]
#[command(
    name = "releasectl",
    version,
    about = "Drive switchyard releases: switch, rollback, smoke, backends, history, reload."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Flags every verb takes, before or after it.
#[derive(Args, Debug)]
pub struct GlobalArgs {
    /// The admin API of the switchyard instance.
    #[arg(
        long,
        global = true,
        env = "RELEASECTL_ADMIN",
        default_value = "http://127.0.0.1:9901",
        value_name = "URL"
    )]
    pub admin: String,
    /// File holding the admin token (default: state/admin.token). RELEASECTL_TOKEN, if set,
    /// holds the token itself and wins.
    #[arg(
        long,
        global = true,
        env = "RELEASECTL_TOKEN_FILE",
        value_name = "PATH"
    )]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show every service: active and previous color, canary, backends with health, in-flight
    /// requests per color.
    Status,
    /// Run the smoke checks of COLOR and, when all pass, move traffic to it atomically.
    Switch(SwitchArgs),
    /// Return services to their previous color.
    Rollback(RollbackArgs),
    /// Run the smoke checks of COLOR without switching.
    Smoke(SmokeArgs),
    /// Replace the backends of a color of a service (persisted).
    Backends(BackendsArgs),
    /// Show the newest events of the release history, oldest first.
    History(HistoryArgs),
    /// Re-read the config; an invalid config is refused and the old one keeps serving.
    Reload,
    /// Send a rising share of requests to COLOR, a step per interval while the SLO holds;
    /// promote at the end, drop to 0 on a breach. Follows progress until then.
    Canary(CanaryArgs),
    /// Make the running canary's color active now.
    Promote(RunningCanaryArgs),
    /// Drop the running canary to 0; the active color stays.
    Abort(RunningCanaryArgs),
    /// Show every certificate: host, issuer, validity, days left, next renewal, last error.
    Certs(CertsArgs),
}

#[derive(Args, Debug)]
pub struct SwitchArgs {
    /// blue or green.
    #[arg(value_name = "COLOR")]
    pub color: Color,
    /// Only these services (repeatable); default: every releasable service.
    #[arg(long = "service", value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Switch without running the smoke checks.
    #[arg(long)]
    pub skip_smoke: bool,
    /// Return only when the old color has no request in flight (or its drain timeout passed).
    #[arg(long)]
    pub wait_drain: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// Only these services (repeatable); default: every service that has a previous color.
    #[arg(long = "service", value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Return only when the old color has no request in flight (or its drain timeout passed).
    #[arg(long)]
    pub wait_drain: bool,
}

#[derive(Args, Debug)]
pub struct SmokeArgs {
    /// blue or green.
    #[arg(value_name = "COLOR")]
    pub color: Color,
    /// Only these services (repeatable); default: every releasable service.
    #[arg(long = "service", value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct BackendsArgs {
    /// blue or green.
    #[arg(value_name = "COLOR")]
    pub color: Color,
    /// ip:port or name:port of each backend (a name stands for every address it resolves
    /// to, looked up again every [dns] refresh_s).
    #[arg(required = true, value_name = "ADDR")]
    pub addrs: Vec<String>,
    /// The service whose backends these are.
    #[arg(long, value_name = "SERVICE")]
    pub service: String,
    /// Allow replacing the backends of the color serving traffic.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// How many of the newest events to show (1 to 1000).
    #[arg(long, default_value_t = 20, value_parser = parse_history_limit, value_name = "N")]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct CanaryArgs {
    /// blue or green.
    #[arg(value_name = "COLOR")]
    pub color: Color,
    /// Rising weights in percent.
    #[arg(
        long,
        default_value = "5,25,50,100",
        value_delimiter = ',',
        value_name = "PERCENT,…"
    )]
    pub steps: Vec<u8>,
    /// Time per step: 30s, 2m, 1h (a bare number is seconds).
    #[arg(long, default_value = "30s", value_parser = parse_interval, value_name = "DURATION")]
    pub interval: u64,
    /// Only these services (repeatable); default: every releasable service.
    #[arg(long = "service", value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Start without running the smoke checks.
    #[arg(long)]
    pub skip_smoke: bool,
    /// Return once the canary started instead of following it.
    #[arg(long)]
    pub detach: bool,
}

/// The services of `promote` and `abort`.
#[derive(Args, Debug)]
pub struct RunningCanaryArgs {
    /// Only the canaries of these services (repeatable); default: every running canary.
    #[arg(long = "service", value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Renew now (all hosts, or the HOSTs given) instead of waiting for the schedule.
    #[arg(long)]
    pub renew: bool,
    /// With --renew: only these hosts.
    #[arg(value_name = "HOST")]
    pub hosts: Vec<String>,
}

/// `--limit` of `history`: what `GET /v1/history?limit=` accepts.
fn parse_history_limit(s: &str) -> Result<usize, String> {
    switchyard::api::history_limit(&format!("limit={s}"))
}

/// `--interval` of `canary`: `30s`, `2m`, `1h` or bare seconds, at least 1 s; in seconds.
fn parse_interval(s: &str) -> Result<u64, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected e.g. 30s, 2m, 1h"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("`{s}`: unit must be s, m or h")),
    };
    if n == 0 {
        return Err("the interval must be at least 1s".into());
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}`: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("30s"), Ok(30));
        assert_eq!(parse_interval("45"), Ok(45));
        assert_eq!(parse_interval("2m"), Ok(120));
        assert_eq!(parse_interval("1h"), Ok(3600));
        for bad in [
            "0",
            "0s",
            "",
            "s",
            "5d",
            "1.5m",
            "-1",
            "99999999999999999999h",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globals_go_before_or_after_the_verb() {
        for args in [
            &["releasectl", "--json", "--admin", "http://x:1", "status"][..],
            &["releasectl", "status", "--admin", "http://x:1", "--json"][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert!(cli.global.json);
            assert_eq!(cli.global.admin, "http://x:1");
            assert!(matches!(cli.command, Command::Status));
        }
    }

    #[test]
    fn history_limit_is_checked_here() {
        let limit = |s: &str| {
            Cli::try_parse_from(["releasectl", "history", "--limit", s]).map(|c| match c.command {
                Command::History(h) => h.limit,
                _ => unreachable!(),
            })
        };
        assert_eq!(limit("1").unwrap(), 1);
        assert_eq!(limit("1000").unwrap(), 1000);
        for bad in ["0", "1001", "many"] {
            assert_eq!(
                limit(bad).unwrap_err().kind(),
                clap::error::ErrorKind::ValueValidation
            );
        }
    }
}
