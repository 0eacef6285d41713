//! `olps token create|list|revoke`, and the service's access flags.

use std::time::Duration;

use clap::{Args, Subcommand};

use super::Format;
use crate::auth::tokens::{self, NewToken, TokenInfo};
use crate::auth::{audit, Principal, Scopes};
use crate::http::access::AccessConfig;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; prints its secret (shown only now) as the last line.
    Create {
        /// A name for the token, unique among the tokens in force (e.g. fraud-service).
        #[arg(long)]
        name: String,
        /// What it may do: predict, feedback, read, write, admin (admin includes every scope);
        /// comma separated or repeated.
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Limit it to this model (UUID or name); repeat for several. Default: every model.
        #[arg(long = "model")]
        models: Vec<String>,
        /// Let it expire after this long, e.g. 90d, 12h, 2w. Default: never.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List the tokens in force (never their secrets).
    List {
        /// Also list revoked tokens.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Revoke a token (by UUID, or by the name of a token in force). Services stop accepting it
    /// within their token-cache period (10 s by default).
    Revoke { token: String },
}

/// The access flags of `olps serve` and `olps up`.
#[derive(Debug, Args)]
pub struct AccessArgs {
    /// Serve without tokens: every request may do everything. For local use: refused unless
    /// --listen is a loopback address.
    #[arg(long, env = "OLPS_NO_AUTH")]
    pub no_auth: bool,
    /// Seconds a verified token is believed without asking the database again; also the longest
    /// a revoked token keeps working on this service (0: check every request).
    #[arg(long, env = "OLPS_TOKEN_CACHE_SECS", default_value_t = 10)]
    pub token_cache_secs: u64,
    /// Require a `read` token for every model on GET /metrics (open by default).
    #[arg(long, env = "OLPS_PROTECT_METRICS")]
    pub protect_metrics: bool,
    /// Require a `read` token on GET /openapi.json (open by default).
    #[arg(long, env = "OLPS_PROTECT_OPENAPI")]
    pub protect_openapi: bool,
}

impl AccessArgs {
    pub fn config(&self) -> AccessConfig {
        AccessConfig {
            require_tokens: !self.no_auth,
            token_cache: Duration::from_secs(self.token_cache_secs),
            protect_metrics: self.protect_metrics,
            protect_openapi: self.protect_openapi,
        }
    }

    /// Refuses `--no-auth` on anything but a loopback address, before touching the database.
    pub fn check_listen(&self, listen: &str) -> anyhow::Result<()> {
        if !self.no_auth {
            return Ok(());
        }
        let loopback = match listen.parse::<std::net::SocketAddr>() {
            Ok(addr) => addr.ip().is_loopback(),
            Err(_) => listen
                .rsplit_once(':')
                .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
        };
        if !loopback {
            anyhow::bail!(
                "--no-auth serves every request without a token, so it is only allowed on a \
                 loopback address (--listen 127.0.0.1:PORT), not on {listen}; create a token \
                 with `olps token create` and drop --no-auth"
            );
        }
        Ok(())
    }
}

fn print_tokens(list: &[TokenInfo], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(list)?),
        Format::Table => {
            println!(
                "{:<36}  {:<20}  {:<16}  {:<26}  {:<8}  {:<20}  last used",
                "token_id", "name", "hint", "scopes", "status", "expires"
            );
            for t in list {
                println!(
                    "{:<36}  {:<20}  {:<16}  {:<26}  {:<8}  {:<20}  {}",
                    t.token_id,
                    t.name,
                    t.hint,
                    format!(
                        "{}{}",
                        t.scopes.join(","),
                        match &t.models {
                            Some(m) => format!(" ({} models)", m.len()),
                            None => String::new(),
                        }
                    ),
                    t.status,
                    t.expires_at
                        .map(|e| e.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| "never".into()),
                    t.last_used_at
                        .map(|e| e.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| "never".into()),
                );
            }
        }
    }
    Ok(())
}

pub async fn run_token(command: TokenCommand) -> anyhow::Result<()> {
    // Check what needs no database first.
    let new = match &command {
        TokenCommand::Create {
            name,
            scopes,
            models,
            expires_in,
        } => {
            tokens::validate_name(name)?;
            let scopes = Scopes::parse(scopes)?;
            let expires_in = expires_in
                .as_deref()
                .map(tokens::parse_duration)
                .transpose()
                .map_err(|m| anyhow::anyhow!("--expires-in: {m}"))?;
            Some(NewToken {
                name: name.clone(),
                scopes,
                models: models.clone(),
                expires_in,
            })
        }
        _ => None,
    };
    let (_, pool) = super::open(2).await?;
    match command {
        TokenCommand::Create { .. } => {
            let new = new.expect("parsed above");
            let created = tokens::create(&pool, &new, &Principal::cli()).await?;
            let info = &created.info;
            audit::record_cli(
                &pool,
                audit::Entry {
                    action: "token.create".into(),
                    target: Some(info.token_id.to_string()),
                    details: serde_json::to_value(info).ok(),
                    ..Default::default()
                },
            )
            .await;
            eprintln!(
                "created token '{}' ({}) with scopes {}{}{}; its secret is shown only now — \
                 send it as 'Authorization: Bearer <secret>':",
                info.name,
                info.token_id,
                info.scopes.join(","),
                match &info.models {
                    Some(m) => format!(", limited to {} model(s)", m.len()),
                    None => ", for every model".to_string(),
                },
                match info.expires_at {
                    Some(t) => format!(", expiring {}", t.format("%Y-%m-%d %H:%M:%S UTC")),
                    None => String::new(),
                }
            );
            println!("{}", created.secret);
        }
        TokenCommand::List { all, format } => {
            let list = tokens::list(&pool, all).await?;
            print_tokens(&list, format)?;
        }
        TokenCommand::Revoke { token } => {
            let info = tokens::revoke(&pool, &token, &Principal::cli()).await?;
            audit::record_cli(
                &pool,
                audit::Entry {
                    action: "token.revoke".into(),
                    target: Some(token.clone()),
                    details: serde_json::to_value(&info).ok(),
                    ..Default::default()
                },
            )
            .await;
            println!(
                "revoked token '{}' ({}); services stop accepting it within their token-cache \
                 period (10 s by default)",
                info.name, info.token_id
            );
        }
    }
    Ok(())
}
