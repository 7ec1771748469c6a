//! `canary`, `promote` and `abort`. `canary` follows its progress until the end — a live
//! bar on a terminal, a line per step otherwise — and exits 0 when promoted, 1 when rolled
//! back or aborted.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use switchyard::api::{CanaryRequest, HistoryEvent, ServicesRequest};
use switchyard::core::color::Color;

use crate::cli::{CanaryArgs, RunningCanaryArgs};
use crate::client::Client;
use crate::exit::Refused;
use crate::render::{self, Out};

/// How often the progress of a canary is polled.
const POLL: Duration = Duration::from_millis(500);

pub async fn canary(client: &Client, args: &CanaryArgs, out: &mut Out) -> anyhow::Result<()> {
    let reply = client
        .canary(&CanaryRequest {
            color: args.color,
            steps: args.steps.clone(),
            interval_s: args.interval,
            services: args.services.clone(),
            skip_smoke: args.skip_smoke,
        })
        .await?;
    // Follow this canary's services only, not unrelated ones running beside it.
    let services = &reply.body.services;
    if args.detach {
        out.answer(&reply, |w, _| {
            writeln!(
                w,
                "canary of {} started on {}: {}% (follow with `releasectl status`)",
                args.color,
                services.join(", "),
                args.steps.first().copied().unwrap_or_default()
            )
        })?;
        return Ok(());
    }
    follow(client, services, args.color, out).await
}

pub async fn promote(
    client: &Client,
    args: &RunningCanaryArgs,
    out: &mut Out,
) -> anyhow::Result<()> {
    let reply = client
        .promote(&ServicesRequest {
            services: args.services.clone(),
        })
        .await?;
    out.answer(&reply, |w, r| {
        render::release(w, r, "promote")?;
        render::status(w, &r.status)
    })?;
    Ok(())
}

pub async fn abort(client: &Client, args: &RunningCanaryArgs, out: &mut Out) -> anyhow::Result<()> {
    let reply = client
        .abort(&ServicesRequest {
            services: args.services.clone(),
        })
        .await?;
    out.answer(&reply, |w, r| {
        writeln!(w, "canary aborted: traffic stays on the active color")?;
        render::status(w, &r.status)
    })?;
    Ok(())
}

/// Where a followed canary is: the bar on a terminal (text mode), else a line per step.
struct Progress {
    bar: Option<ProgressBar>,
    color: Color,
    started: Instant,
    last_weight: Option<u8>,
}

impl Progress {
    fn new(color: Color, json: bool) -> Progress {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(100);
            b.set_style(
                ProgressStyle::with_template("{prefix} [{bar:40.green/blue}] {pos:>3}% {msg}")
                    .expect("a valid progress template")
                    .progress_chars("=> "),
            );
            b.set_prefix(format!("canary {color}"));
            b
        });
        Progress {
            bar,
            color,
            started: Instant::now(),
            last_weight: None,
        }
    }

    /// The canary runs at `weight`: move the bar, or print a line when it changed.
    fn step(&mut self, weight: u8, out: &mut Out) -> std::io::Result<()> {
        if self.last_weight == Some(weight) {
            return Ok(());
        }
        self.last_weight = Some(weight);
        match &self.bar {
            Some(b) => b.set_position(weight.into()),
            None if !out.json() => writeln!(
                out,
                "{:>5}s  {} at {weight}%",
                self.started.elapsed().as_secs(),
                self.color
            )?,
            None => {}
        }
        Ok(())
    }

    fn finish(&self, promoted: bool) {
        if let Some(b) = &self.bar {
            if promoted {
                b.set_position(100);
            }
            b.finish_with_message(if promoted { "promoted" } else { "rolled back" });
        }
    }
}

/// Polls status until every canary of `services` ended; Ok if `color` was promoted,
/// [`Refused`] with the reason from history if the canary was dropped (an SLO breach or
/// an abort). Under `--json`, prints the last status.
async fn follow(
    client: &Client,
    services: &[String],
    color: Color,
    out: &mut Out,
) -> anyhow::Result<()> {
    let mut progress = Progress::new(color, out.json());
    let last = loop {
        let reply = client.status().await?;
        let running = services
            .iter()
            .filter_map(|s| reply.body.services.get(s)?.canary.as_ref())
            .map(|c| c.weight)
            .min();
        match running {
            Some(weight) => progress.step(weight, out)?,
            None => break reply,
        }
        tokio::time::sleep(POLL).await;
    };
    let promoted = services
        .iter()
        .all(|s| last.body.services.get(s).and_then(|s| s.active) == Some(color));
    progress.finish(promoted);
    if out.json() {
        writeln!(out, "{}", render::pretty(&last.raw))?;
    }
    if promoted {
        if !out.json() {
            writeln!(
                out,
                "{color} promoted on {} after {}s",
                services.join(", "),
                progress.started.elapsed().as_secs()
            )?;
        }
        return Ok(());
    }
    let why = why_ended(client).await;
    Err(Refused(format!("canary of {color} rolled back: {why}")).into())
}

/// Why the canary ended, from the newest rollback or abort in history.
async fn why_ended(client: &Client) -> String {
    let events = match client.history(20).await {
        Ok(h) => h.body.events,
        Err(_) => Vec::new(),
    };
    events
        .into_iter()
        .rev()
        .find(|e| e.action == "rollback" || e.action == "abort")
        .map(reason)
        .unwrap_or_else(|| "the canary ended".into())
}

/// The `detail` text of an event's free-form detail, or else its action.
fn reason(e: HistoryEvent) -> String {
    e.detail
        .get("detail")
        .and_then(|d| d.as_str())
        .map(str::to_string)
        .unwrap_or(e.action)
}
