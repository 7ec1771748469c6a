//! `releasectl` — the command line over switchyard's admin API (docs/releasectl.md).
//!
//! Exit codes ([`exit::Exit`]): 0 done; 1 refused or rolled back (a smoke check failed,
//! nothing to roll back); 2 usage or config error; 3 the admin API could not be reached or
//! refused the token. A closed stdout (`releasectl history | head -1`) ends the run quietly
//! with 0.

mod backends;
mod canary;
mod certs;
mod cli;
mod client;
mod exit;
mod history;
mod release;
mod reload;
mod render;
mod status;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::client::{Client, ClientError};
use crate::exit::Exit;
use crate::render::Out;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version go to stdout and are not errors.
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Done
            }
            .into();
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                io::stderr(),
                "releasectl: cannot start the async runtime: {e}"
            );
            return Exit::Refused.into();
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => Exit::Done.into(),
        Err(err) => report(&err, cli.global.json).into(),
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let client = Client::new(&cli.global.admin, cli.global.token_file.as_deref())?;
    let mut out = Out::new(cli.global.json, io::stdout());
    match &cli.command {
        Command::Status => status::run(&client, &mut out).await?,
        Command::Switch(a) => release::switch(&client, a, &mut out).await?,
        Command::Rollback(a) => release::rollback(&client, a, &mut out).await?,
        Command::Smoke(a) => release::smoke(&client, a, &mut out).await?,
        Command::Backends(a) => backends::run(&client, a, &mut out).await?,
        Command::History(a) => history::run(&client, a, &mut out).await?,
        Command::Reload => reload::run(&client, &mut out).await?,
        Command::Canary(a) => canary::canary(&client, a, &mut out).await?,
        Command::Promote(a) => canary::promote(&client, a, &mut out).await?,
        Command::Abort(a) => canary::abort(&client, a, &mut out).await?,
        Command::Certs(a) => certs::run(&client, a, &mut out).await?,
    }
    out.flush()?;
    Ok(())
}

/// Says what went wrong on stderr — the cause chain on one line, then the failed smoke
/// checks or config errors of the API's answer (under `--json`, the answer itself on
/// stdout first) — and returns the exit code. A closed stdout says nothing and is 0, as in
/// ripgrep: the reader has seen all it wanted.
fn report(err: &anyhow::Error, json: bool) -> Exit {
    if broken_pipe(err) {
        return Exit::Done;
    }
    let client_err = err.chain().find_map(|e| e.downcast_ref::<ClientError>());
    let answer = client_err.and_then(ClientError::answer);
    if let (true, Some(a)) = (json, answer) {
        let _ = writeln!(io::stdout(), "{}", render::pretty(&a.raw));
    }
    let mut stderr = io::stderr().lock();
    let _ = writeln!(stderr, "releasectl: {err:#}");
    if let Some(a) = answer {
        let _ = render::failures(&mut stderr, &a.body.failures);
        for e in &a.body.errors {
            let _ = writeln!(stderr, "  {e}");
        }
    }
    // Anything else — a verb [`exit::Refused`], say — is 1.
    client_err.map_or(Exit::Refused, ClientError::exit)
}

/// stdout was closed under us (EPIPE: Rust ignores SIGPIPE, so writes fail instead). Only
/// an I/O error of our own writes counts, not one deep in the cause chain of a call to the
/// admin API (a connection the daemon closed is no reason to be quiet).
fn broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}
