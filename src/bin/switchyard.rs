//! `switchyard` — the daemon: `run`, `check`, `demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use switchyard::core::config::{Config, LogFormat, DEMO_TOML};
use switchyard::runtime::dns::Resolver;
use switchyard::{logging, server};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Edge proxy and blue/green release controller.
#[derive(Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy from a config file or directory.
    Run(RunArgs),
    /// Validate a config: exit 0, or print every error (file:line:column, key) and exit 2.
    /// Backend names that do not resolve from here are warnings (exit 0).
    Check {
        /// A TOML file, or a directory whose *.toml files are merged.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the demo: the proxy on loopback ports in front of two built-in backends, blue
    /// and green.
    Demo {
        /// Use this config instead of the embedded routes/demo.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, value_enum)]
        log_format: Option<Format>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// A TOML file, or a directory whose *.toml files are merged.
    #[arg(long, short)]
    config: PathBuf,
    /// Log format; overrides `[log] format`.
    #[arg(long, value_enum)]
    log_format: Option<Format>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    switchyard::persist::config_files::load(path).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!(
            "{}: {} error(s); nothing was started",
            path.display(),
            errors.0.len()
        );
        ExitCode::from(2)
    })
}

fn start(config: Config, format: Option<Format>, demo: Option<String>) -> ExitCode {
    let format = match format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Text) => LogFormat::Text,
        None => config.log_format,
    };
    logging::init(format, &config.log_level);
    match server::run(config, server::RunOptions { demo_service: demo }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn print_demo_help(config: &Config) {
    let http = config
        .listen
        .http
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin = config.listen.admin;
    let https = match (config.listen.https, &config.tls) {
        (Some(a), Some(tls)) => format!(
            "\n  https:     https://localhost:{port}/   (local CA: {ca})\n             curl --cacert {ca} https://localhost:{port}/",
            port = a.port(),
            ca = tls.cert_dir.join("ca.crt").display()
        ),
        _ => String::new(),
    };
    println!(
        r#"
Switchyard demo is running.
  proxy:     http://{http}/      (routes: localhost, 127.0.0.1 → service "web"){https}
  admin:     http://{admin}/health   http://{admin}/metrics
  state dir: {state}

Try:
  curl -s http://{http}/                         # answered by the blue backend
  curl -s -H 'Host: nope.example' -o /dev/null -w '%{{http_code}}\n' http://{http}/   # 404: no route
  releasectl status                                 # from this directory (token: state/admin.token)
  releasectl switch green                           # smoke-checks green, then switches atomically
  curl -s http://{http}/                         # now answered by green
  releasectl rollback
  curl -s http://{admin}/metrics | grep switchyard_requests_total
(releasectl: `cargo run --release --bin releasectl -- status`, or target/release/releasectl)
Stop with Ctrl-C (or SIGTERM for a graceful drain).
"#,
        state = config.state_dir.display()
    );
}

/// Looks up every backend name as the daemon would (`[dns]`) and prints a warning for each
/// that does not resolve: not an error, since compose and Kubernetes names resolve only
/// inside their own networks, and the daemon looks them up again at run time. Returns how
/// many did not resolve.
fn warn_unresolved(config: &Config) -> usize {
    let names = config.backend_names();
    if names.is_empty() {
        return 0;
    }
    let list: Vec<_> = names.keys().cloned().collect();
    let found = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(Resolver::new(&config.dns).lookup(&list)),
        Err(e) => {
            eprintln!("warning: backend names were not looked up: {e}");
            return 0;
        }
    };
    let mut failed = 0;
    for (name, result) in found {
        let why = match result {
            Ok(addrs) if !addrs.is_empty() => continue,
            Ok(_) => "no address".to_string(),
            Err(e) => e,
        };
        failed += 1;
        let keys = names.get(&name).map(|k| k.join("`, `")).unwrap_or_default();
        eprintln!(
            "warning: key `{keys}`: backend `{name}` does not resolve from here ({why}); \
             switchyard looks it up again when it runs, every [dns] refresh_s"
        );
    }
    failed
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match switchyard::persist::config_files::load(&config) {
            Ok(c) => {
                let unresolved = warn_unresolved(&c);
                let note = match unresolved {
                    0 => String::new(),
                    1 => "; 1 backend name does not resolve here".to_string(),
                    n => format!("; {n} backend names do not resolve here"),
                };
                println!(
                    "{}: ok ({} routes, {} services{note})",
                    config.display(),
                    c.routes.len(),
                    c.services.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{}: {} error(s)", config.display(), errors.0.len());
                ExitCode::from(2)
            }
        },
        Command::Run(args) => match load(&args.config) {
            Ok(c) => start(c, args.log_format, None),
            Err(code) => code,
        },
        Command::Demo { config, log_format } => {
            let loaded = match &config {
                Some(path) => load(path),
                None => {
                    let cwd = std::env::current_dir().unwrap_or_default();
                    Config::from_str("routes/demo.toml (embedded)", DEMO_TOML, &cwd).map_err(|e| {
                        eprintln!("{e}");
                        ExitCode::from(2)
                    })
                }
            };
            match loaded {
                Ok(c) => {
                    print_demo_help(&c);
                    start(c, log_format, Some("web".to_string()))
                }
                Err(code) => code,
            }
        }
    }
}
