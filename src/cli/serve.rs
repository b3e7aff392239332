//! `paliforge serve`: the long-lived service (HTTP API, web page, job pool) until Ctrl-C, when
//! running jobs checkpoint and stay queued for the next start.

use std::path::PathBuf;

use clap::Args;
use service::{ServeConfig, Server};

#[derive(Args)]
pub struct ServeArgs {
    /// HOST:PORT to listen on; anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1:8470")]
    addr: String,
    /// The database, run folders and prepared datasets.
    #[arg(long, default_value = "paliforge-data")]
    data_dir: PathBuf,
    /// Bearer token every API request must carry.
    #[arg(long, env = "PALIFORGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A folder specs may read data from, besides the data directory (repeatable).
    #[arg(long = "data-root")]
    data_roots: Vec<PathBuf>,
    /// Training runs at once.
    #[arg(long, default_value_t = 1)]
    training_slots: usize,
    /// Preparation jobs at once, beside training.
    #[arg(long, default_value_t = 1)]
    preparation_slots: usize,
    /// Data pipeline workers per run; 0 uses every core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The largest request body, in MiB.
    #[arg(long, default_value_t = 16)]
    max_body_mib: usize,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    ::model::tune_malloc();
    let config = ServeConfig {
        addr: args.addr,
        data_dir: args.data_dir,
        token: args.token,
        data_roots: args.data_roots,
        training_slots: args.training_slots,
        preparation_slots: args.preparation_slots,
        threads: args.threads,
        body_limit: args.max_body_mib << 20,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let server = Server::bind(config).await?;
        // Tests and scripts read the address (port 0 picks one) from this first line.
        println!("listening on http://{}", server.addr());
        server.run(shutdown_signal()).await
    })?;
    Ok(())
}

/// Ctrl-C, or SIGTERM (how service managers and containers stop a process).
async fn shutdown_signal() {
    let terminate = async {
        #[cfg(unix)]
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
