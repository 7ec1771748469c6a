//! `switch`, `rollback` and `smoke`: moving traffic between colors, and the checks that
//! guard it.

use switchyard::api::{RollbackRequest, SmokeRequest, SwitchRequest};

use crate::cli::{RollbackArgs, SmokeArgs, SwitchArgs};
use crate::client::Client;
use crate::exit::Refused;
use crate::render::{self, Out};

pub async fn switch(client: &Client, args: &SwitchArgs, out: &mut Out) -> anyhow::Result<()> {
    let reply = client
        .switch(&SwitchRequest {
            color: args.color,
            services: args.services.clone(),
            skip_smoke: args.skip_smoke,
            wait_drain: args.wait_drain,
        })
        .await?;
    out.answer(&reply, |w, r| render::release(w, r, "switch"))?;
    Ok(())
}

pub async fn rollback(client: &Client, args: &RollbackArgs, out: &mut Out) -> anyhow::Result<()> {
    let reply = client
        .rollback(&RollbackRequest {
            services: args.services.clone(),
            wait_drain: args.wait_drain,
        })
        .await?;
    out.answer(&reply, |w, r| render::release(w, r, "roll back"))?;
    Ok(())
}

/// Exit 1 when any check failed.
pub async fn smoke(client: &Client, args: &SmokeArgs, out: &mut Out) -> anyhow::Result<()> {
    let reply = client
        .smoke(&SmokeRequest {
            color: args.color,
            services: args.services.clone(),
        })
        .await?;
    out.answer(&reply, |w, r| render::smoke(w, &r.results))?;
    if !reply.body.passed {
        return Err(Refused(format!("smoke checks of {} failed", args.color)).into());
    }
    Ok(())
}
