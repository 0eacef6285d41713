//! `olps db status` and `olps db stop`: the embedded cluster under `.olps/` in the working
//! directory ([`crate::embedded`]), which `olps demo`, `olps up` and every other command start on
//! demand when `DATABASE_URL` is unset, and which keeps running after them.

use std::path::Path;

use clap::Subcommand;

use crate::embedded::{self, DEFAULT_BASE_DIR};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Whether the embedded cluster in ./.olps exists and runs: data directory, PID, port, log.
    Status,
    /// Stop the embedded cluster in ./.olps (its data stays; the next olps command starts it
    /// again). Never touches the server DATABASE_URL names.
    Stop,
}

/// A note when DATABASE_URL is set: olps commands use that server, not the embedded one.
fn database_url_note() -> Option<String> {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .map(|url| {
            format!(
                "note: DATABASE_URL is set ({}): olps commands use that server, not the embedded \
                 cluster",
                crate::db::redact(&url)
            )
        })
}

pub fn run(command: DbCommand) -> anyhow::Result<()> {
    let base = Path::new(DEFAULT_BASE_DIR);
    if let Some(note) = database_url_note() {
        eprintln!("olps: {note}");
    }
    match command {
        DbCommand::Status => {
            let status = embedded::cluster_status(base)?;
            if !status.exists {
                println!(
                    "no embedded cluster in {} (olps creates one on demand when DATABASE_URL is \
                     unset)",
                    status.data_dir.display()
                );
                return Ok(());
            }
            let port = status
                .port
                .map_or_else(|| "?".to_string(), |p| p.to_string());
            if status.running {
                let pid = status
                    .pid
                    .map_or_else(|| "?".to_string(), |p| p.to_string());
                println!(
                    "running: embedded cluster in {} (PID {pid}, 127.0.0.1:{port})",
                    status.data_dir.display()
                );
                println!("log: {}", status.log.display());
                println!("stop it with `olps db stop`");
            } else {
                println!(
                    "stopped: embedded cluster in {} (port {port} when running)",
                    status.data_dir.display()
                );
                println!("log: {}", status.log.display());
                println!("the next olps command without DATABASE_URL starts it again");
            }
        }
        DbCommand::Stop => {
            let data_dir = std::path::absolute(base.join("data"))?;
            if embedded::stop_cluster(base)? {
                println!(
                    "stopped the embedded cluster in {}; its data is kept (the next olps \
                     command starts it again)",
                    data_dir.display()
                );
            } else {
                println!(
                    "the embedded cluster in {} is not running; nothing to stop",
                    data_dir.display()
                );
            }
        }
    }
    Ok(())
}
