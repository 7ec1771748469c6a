//! `status`: every service's colors, canary, backends and in-flight requests.

use crate::client::Client;
use crate::render::{self, Out};

pub async fn run(client: &Client, out: &mut Out) -> anyhow::Result<()> {
    let reply = client.status().await?;
    out.answer(&reply, render::status)?;
    Ok(())
}
