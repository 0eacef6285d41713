//! The `api_tokens` table. A token's secret is `olps_` followed by 64 hex digits (256 bits from
//! the operating system's random source); it is returned once, by [`create`], and only its SHA-256
//! is stored (a fast hash is enough for a secret of that entropy: there is nothing to guess).

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use super::{Principal, Scopes, UnknownScope};
use crate::models::{self, ModelError};

/// Every secret starts with this, so secret scanners (and people) recognise a leaked one.
pub const SECRET_PREFIX: &str = "olps_";
/// Random bytes per secret (256 bits).
pub const SECRET_BYTES: usize = 32;
/// Characters of the secret (after the prefix) kept as its `hint`.
const HINT_LEN: usize = 8;
pub const MAX_NAME_LEN: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token '{0}' not found (give its UUID or its name; `olps token list` shows them)")]
    NotFound(String),
    #[error("a token named '{0}' is in force already; choose another name or revoke that one")]
    DuplicateName(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Scope(#[from] UnknownScope),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A new random secret: `olps_` + 64 lowercase hex digits.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let mut secret = String::with_capacity(SECRET_PREFIX.len() + 2 * SECRET_BYTES);
    secret.push_str(SECRET_PREFIX);
    for b in bytes {
        secret.push_str(&format!("{b:02x}"));
    }
    secret
}

/// Whether `s` has the shape of a secret (checked before any lookup).
pub fn looks_like_secret(s: &str) -> bool {
    s.len() == SECRET_PREFIX.len() + 2 * SECRET_BYTES
        && s.starts_with(SECRET_PREFIX)
        && s[SECRET_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The stored form of a secret.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn hint(secret: &str) -> String {
    format!(
        "{}{}…",
        SECRET_PREFIX,
        &secret[SECRET_PREFIX.len()..SECRET_PREFIX.len() + HINT_LEN]
    )
}

/// Parses a duration such as `30d`, `12h`, `90m`, `45s`, `2w` or `1d12h`.
pub fn parse_duration(text: &str) -> Result<chrono::Duration, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "'{text}' is not a duration: give a number with a unit, e.g. 90d, 12h, 30m, 45s, \
             2w or 1d12h"
        )
    };
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        let n: i64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
    }
    if !number.is_empty() || total <= 0 || total > 100 * 365 * 86_400 {
        return Err(bad());
    }
    Ok(chrono::Duration::seconds(total))
}

pub fn validate_name(name: &str) -> Result<(), TokenError> {
    let invalid = |why: &str| Err(TokenError::Invalid(format!("name: {why}")));
    if name.trim().is_empty() {
        return invalid("must not be empty");
    }
    if name.chars().count() > MAX_NAME_LEN {
        return invalid("at most 200 characters");
    }
    if name.chars().any(char::is_control) {
        return invalid("must not contain control characters");
    }
    if Uuid::parse_str(name).is_ok() {
        return invalid("must not be a UUID (tokens are addressed by UUID or name)");
    }
    if name == "." || name == ".." {
        return invalid("must not be '.' or '..' (URLs drop such path segments)");
    }
    Ok(())
}

/// What to create.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub scopes: Scopes,
    /// Models by UUID or name; empty: every model.
    pub models: Vec<String>,
    pub expires_in: Option<chrono::Duration>,
}

/// A token as listed (never its secret nor its hash).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TokenInfo {
    pub token_id: Uuid,
    pub name: String,
    /// The start of the secret, to recognise it.
    pub hint: String,
    pub scopes: Vec<String>,
    /// Null: every model.
    pub models: Option<Vec<Uuid>>,
    /// `active`, `expired` or `revoked`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A created token: shown once with its secret.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer secret. Only this answer ever shows it.
    pub secret: String,
}

#[derive(FromRow)]
struct TokenRow {
    token_id: Uuid,
    name: String,
    hint: String,
    scopes: Vec<String>,
    model_ids: Option<Vec<Uuid>>,
    created_at: DateTime<Utc>,
    created_by: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    revoked_by: Option<String>,
    last_used_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "token_id, name, hint, scopes, model_ids, created_at, created_by, \
                       expires_at, revoked_at, revoked_by, last_used_at";

impl TokenRow {
    fn info(self) -> TokenInfo {
        let status = if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|t| t <= Utc::now()) {
            "expired"
        } else {
            "active"
        };
        TokenInfo {
            token_id: self.token_id,
            name: self.name,
            hint: self.hint,
            scopes: self.scopes,
            models: self.model_ids,
            status: status.to_string(),
            created_at: self.created_at,
            created_by: self.created_by,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            revoked_by: self.revoked_by,
            last_used_at: self.last_used_at,
        }
    }
}

/// Creates a token; the answer holds its secret, which is stored nowhere.
pub async fn create(
    pool: &sqlx::PgPool,
    new: &NewToken,
    created_by: &Principal,
) -> Result<CreatedToken, TokenError> {
    validate_name(&new.name)?;
    if new.scopes.is_empty() {
        return Err(TokenError::Invalid(
            "scopes: give at least one of predict, feedback, read, write, admin".into(),
        ));
    }
    let models = if new.models.is_empty() {
        None
    } else {
        let mut ids = Vec::with_capacity(new.models.len());
        for key in &new.models {
            ids.push(models::resolve_id(pool, key).await?);
        }
        ids.sort();
        ids.dedup();
        Some(ids)
    };
    if let (Some(limit), Some(wanted)) = (&created_by.models, &models) {
        // A token limited to some models cannot mint one for others (token management needs an
        // unrestricted token anyway; this is the second lock on that door).
        if wanted.iter().any(|m| !limit.contains(m)) {
            return Err(TokenError::Invalid(
                "models: a token can only be limited to models its creator may use".into(),
            ));
        }
    }
    let secret = generate_secret();
    let row: TokenRow = sqlx::query_as(&format!(
        "INSERT INTO api_tokens (name, token_hash, hint, scopes, model_ids, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
         RETURNING {COLUMNS}"
    ))
    .bind(&new.name)
    .bind(hash(&secret).as_slice())
    .bind(hint(&secret))
    .bind(new.scopes.names())
    .bind(&models)
    .bind(created_by.describe())
    .bind(new.expires_in.map(|d| d.num_seconds() as f64))
    .fetch_one(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            TokenError::DuplicateName(new.name.clone())
        }
        _ => TokenError::Db(e),
    })?;
    Ok(CreatedToken {
        info: row.info(),
        secret,
    })
}

/// Every token, newest first; revoked ones only with `include_revoked`.
pub async fn list(
    db: impl PgExecutor<'_>,
    include_revoked: bool,
) -> Result<Vec<TokenInfo>, TokenError> {
    let rows: Vec<TokenRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM api_tokens WHERE $1 OR revoked_at IS NULL
         ORDER BY created_at DESC, name"
    ))
    .bind(include_revoked)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(TokenRow::info).collect())
}

/// Revokes a token given by UUID or by the name of a token in force. Revoking a revoked token
/// changes nothing and answers it as it is.
pub async fn revoke(
    db: impl PgExecutor<'_>,
    key: &str,
    revoked_by: &Principal,
) -> Result<TokenInfo, TokenError> {
    let id = Uuid::parse_str(key).ok();
    let row: Option<TokenRow> = sqlx::query_as(&format!(
        "WITH target AS (
             SELECT token_id FROM api_tokens
             WHERE CASE WHEN $1::uuid IS NOT NULL THEN token_id = $1
                        ELSE name = $2 AND revoked_at IS NULL END
         ),
         revoked AS (
             UPDATE api_tokens t SET revoked_at = now(), revoked_by = $3
             FROM target WHERE t.token_id = target.token_id AND t.revoked_at IS NULL
             RETURNING t.token_id
         )
         SELECT {COLUMNS} FROM api_tokens WHERE token_id IN (SELECT token_id FROM target)"
    ))
    .bind(id)
    .bind(key)
    .bind(revoked_by.describe())
    .fetch_optional(db)
    .await?;
    // The SELECT sees the table before the UPDATE of the same statement: a token revoked just now
    // shows revoked_at NULL here. Fill in what the UPDATE wrote.
    let mut info = row
        .ok_or_else(|| TokenError::NotFound(key.to_string()))?
        .info();
    if info.revoked_at.is_none() {
        info.revoked_at = Some(Utc::now());
        info.revoked_by = Some(revoked_by.describe());
        info.status = "revoked".into();
    }
    Ok(info)
}

/// A token as the verifier sees it.
#[derive(Debug, Clone, FromRow)]
pub struct StoredToken {
    pub token_id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    pub model_ids: Option<Vec<Uuid>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Looks a secret's hash up, and records the use of a token in force (`last_used_at`).
pub async fn lookup(
    db: impl PgExecutor<'_>,
    token_hash: &[u8; 32],
) -> Result<Option<StoredToken>, sqlx::Error> {
    sqlx::query_as(
        "WITH t AS (
             SELECT token_id, name, scopes, model_ids, expires_at, revoked_at
             FROM api_tokens WHERE token_hash = $1
         ),
         used AS (
             UPDATE api_tokens a SET last_used_at = now()
             FROM t
             WHERE a.token_id = t.token_id AND t.revoked_at IS NULL
               AND (t.expires_at IS NULL OR t.expires_at > now())
             RETURNING 1
         )
         SELECT t.*, (SELECT count(*) FROM used) AS used FROM t",
    )
    .bind(token_hash.as_slice())
    .fetch_optional(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_recognisable() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("olps_") && a.len() == 69, "{a}");
        assert!(looks_like_secret(&a));
        assert!(!looks_like_secret(&a[..68]));
        assert!(!looks_like_secret(&a.replace("olps_", "olpx_")));
        assert_eq!(hash(&a), hash(&a.clone()));
        assert_ne!(hash(&a), hash(&b));
        assert!(hint(&a).starts_with(&a[..13]));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("90d").unwrap().num_seconds(), 90 * 86_400);
        assert_eq!(parse_duration("1d12h").unwrap().num_seconds(), 129_600);
        assert_eq!(parse_duration("45s").unwrap().num_seconds(), 45);
        assert_eq!(parse_duration("2w").unwrap().num_days(), 14);
        for bad in ["", "12", "h", "3y", "-1d", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
