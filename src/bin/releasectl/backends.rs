//! `backends`: replace the backends of one color of a service.

use switchyard::api::BackendsRequest;

use crate::cli::BackendsArgs;
use crate::client::Client;
use crate::render::Out;

pub async fn run(client: &Client, args: &BackendsArgs, out: &mut Out) -> anyhow::Result<()> {
    let req = BackendsRequest {
        backends: args.addrs.clone(),
        force: args.force,
    };
    let reply = client.set_backends(&args.service, args.color, &req).await?;
    out.answer(&reply, |w, _| {
        writeln!(
            w,
            "{} {} backends: {}",
            args.service,
            args.color,
            args.addrs.join(", ")
        )
    })?;
    Ok(())
}
