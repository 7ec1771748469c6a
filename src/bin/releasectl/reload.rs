//! `reload`: re-read the config; an invalid one is refused (exit 2) with its errors.

use crate::client::Client;
use crate::render::Out;

pub async fn run(client: &Client, out: &mut Out) -> anyhow::Result<()> {
    let reply = client.reload().await?;
    out.answer(&reply, |w, r| {
        writeln!(w, "reloaded: {} routes, {} services", r.routes, r.services)
    })?;
    Ok(())
}
