//! `certs`: the certificate table, or `--renew` to order new ones now.

use switchyard::api::RenewRequest;

use crate::cli::CertsArgs;
use crate::client::Client;
use crate::render::{self, Out};

pub async fn run(client: &Client, args: &CertsArgs, out: &mut Out) -> anyhow::Result<()> {
    if args.renew {
        let reply = client
            .renew_certs(&RenewRequest {
                hosts: args.hosts.clone(),
            })
            .await?;
        out.answer(&reply, |w, r| {
            writeln!(w, "renewing now: {}", r.hosts.join(", "))
        })?;
    } else {
        let reply = client.certs().await?;
        out.answer(&reply, render::certs)?;
    }
    Ok(())
}
