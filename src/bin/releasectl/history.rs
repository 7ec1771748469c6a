//! `history`: the newest events, oldest first.

use crate::cli::HistoryArgs;
use crate::client::Client;
use crate::render::{self, Out};

pub async fn run(client: &Client, args: &HistoryArgs, out: &mut Out) -> anyhow::Result<()> {
    let reply = client.history(args.limit).await?;
    out.answer(&reply, render::history)?;
    Ok(())
}
