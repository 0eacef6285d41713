//! Access control: API tokens with scopes (and optionally a set of models), their verification
//! with a short-lived in-memory cache, and the audit trail of state-changing actions.
//!
//! - [`tokens`]: the `api_tokens` table — create (the secret is returned once, only its SHA-256
//!   is stored), list, revoke, look up by secret;
//! - [`cache`]: [`cache::Verifier`], which answers "who is this bearer?" from memory for
//!   [`cache::DEFAULT_TTL`] after checking the database, so a request costs no database round
//!   trip; a revocation takes effect within that time;
//! - [`audit`]: the `audit_log` table.
//!
//! Which HTTP route needs which scope is one table, `http::access::ROUTES`.

pub mod audit;
pub mod cache;
pub mod tokens;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a token may do. `admin` includes every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `POST /v1/models/{m}/predict`.
    Predict,
    /// `POST /v1/models/{m}/feedback`.
    Feedback,
    /// Models, parameters, history, snapshots, snapshot policy, metrics.
    Read,
    /// Create models and snapshots, set snapshot policies.
    Write,
    /// Rollback, delete snapshots, resume, tokens; and everything above.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Predict,
        Scope::Feedback,
        Scope::Read,
        Scope::Write,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Predict => "predict",
            Scope::Feedback => "feedback",
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope '{0}': scopes are predict, feedback, read, write and admin")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Scope, UnknownScope> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownScope(s.trim().to_string()))
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Scopes {
        Scopes(Scope::ALL.iter().fold(0, |bits, s| bits | s.bit()))
    }

    pub fn from_list(list: &[Scope]) -> Scopes {
        Scopes(list.iter().fold(0, |bits, s| bits | s.bit()))
    }

    /// Parses names (a list, each of which may itself be comma separated).
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Scopes, UnknownScope> {
        let mut list = Vec::new();
        for name in names {
            for part in name.as_ref().split(',').filter(|p| !p.trim().is_empty()) {
                list.push(part.parse::<Scope>()?);
            }
        }
        Ok(Scopes::from_list(&list))
    }

    /// Whether `scope` is granted (`admin` grants every scope).
    pub fn allows(self, scope: Scope) -> bool {
        self.0 & (scope.bit() | Scope::Admin.bit()) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes, in the order of [`Scope::ALL`].
    pub fn list(self) -> Vec<Scope> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.0 & s.bit() != 0)
            .collect()
    }

    pub fn names(self) -> Vec<String> {
        self.list().iter().map(|s| s.as_str().to_string()).collect()
    }
}

/// Who made a request or ran a command, for authorization and the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub actor: Actor,
    pub scopes: Scopes,
    /// `None`: every model; else only these.
    pub models: Option<Vec<Uuid>>,
    /// When the token stops working (checked on every request, also from the cache).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Who made a settings change, as `model_settings_changes.changed_by` records it.
pub fn changed_by(principal: Option<&Principal>) -> String {
    match principal.map(|p| &p.actor) {
        Some(Actor::Token { name, .. }) => format!("token:{name}"),
        Some(Actor::Cli) => "cli".to_string(),
        Some(Actor::NoAuth) | None => "no-auth".to_string(),
    }
}

/// The kind of caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An API token.
    Token { token_id: Uuid, name: String },
    /// The `olps` command line (it connects to the database directly).
    Cli,
    /// A service run with `--no-auth` (loopback only): every request may do everything.
    NoAuth,
}

impl Principal {
    /// The caller of a `--no-auth` service.
    pub fn no_auth() -> Principal {
        Principal {
            actor: Actor::NoAuth,
            scopes: Scopes::all(),
            models: None,
            expires_at: None,
        }
    }

    /// The command line.
    pub fn cli() -> Principal {
        Principal {
            actor: Actor::Cli,
            scopes: Scopes::all(),
            models: None,
            expires_at: None,
        }
    }

    /// Whether this caller may use model `id`.
    pub fn sees_model(&self, id: Uuid) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(&id))
    }

    /// Whether this caller may use every model.
    pub fn all_models(&self) -> bool {
        self.models.is_none()
    }

    pub fn token_id(&self) -> Option<Uuid> {
        match &self.actor {
            Actor::Token { token_id, .. } => Some(*token_id),
            _ => None,
        }
    }

    /// `token`, `cli` or `no-auth` (`audit_log.actor`).
    pub fn actor_kind(&self) -> &'static str {
        match self.actor {
            Actor::Token { .. } => "token",
            Actor::Cli => "cli",
            Actor::NoAuth => "no-auth",
        }
    }

    /// How this caller is named in `model_versions.source` and `parameter_updates.source` of a
    /// rollback: `rollback by token NAME (UUID)`, `rollback by cli (USER)` or
    /// `rollback by no-auth request`.
    pub fn rollback_source(&self) -> String {
        match &self.actor {
            Actor::Token { token_id, name } => format!("rollback by token {name} ({token_id})"),
            Actor::Cli => format!("rollback by cli ({})", os_user()),
            Actor::NoAuth => "rollback by no-auth request".to_string(),
        }
    }

    /// For `created_by` / `revoked_by` of tokens.
    pub fn describe(&self) -> String {
        match &self.actor {
            Actor::Token { token_id, name } => format!("token {name} ({token_id})"),
            Actor::Cli => format!("cli ({})", os_user()),
            Actor::NoAuth => "no-auth request".to_string(),
        }
    }
}

/// The operating-system user running this process (`USER`, else `LOGNAME`, else its uid).
pub fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown user".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_includes_every_scope_and_others_only_themselves() {
        let admin = Scopes::from_list(&[Scope::Admin]);
        assert!(Scope::ALL.iter().all(|s| admin.allows(*s)));
        let predict = Scopes::parse(&["predict,feedback"]).unwrap();
        assert!(predict.allows(Scope::Predict) && predict.allows(Scope::Feedback));
        assert!(!predict.allows(Scope::Read) && !predict.allows(Scope::Admin));
        assert_eq!(predict.names(), ["predict", "feedback"]);
        assert!(Scopes::parse(&["rule"]).is_err());
    }
}
