//! Verifying bearer secrets without a database round trip per request.
//!
//! A secret is hashed (SHA-256) and looked up in memory. An entry younger than the cache period
//! (the `ttl`, [`DEFAULT_TTL`] unless configured) answers by itself — valid with its scopes and
//! models, or invalid; an older one or a miss asks the database once (which also records the
//! token's `last_used_at`). So a revoked token stops working at most `ttl` after the revocation
//! on every service (at once on the service that revoked it), and an expired one at its expiry
//! exactly (the expiry is checked on every request). Model names met in routes are resolved to
//! their UUIDs the same way, for tokens limited to some models. When the database cannot be
//! reached to check a stale entry again, the entry's verdict stands (up to [`MAX_STALE`]), so
//! predictions keep coming from memory through an outage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

use super::tokens::{self, StoredToken};
use super::{Actor, Principal, Scopes};

/// How long a verified (or refused) secret is believed without asking the database again.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// How old a verdict (or a resolved name) may be and still be used while the database cannot be
/// reached to check it again: a service keeps answering predictions from memory through a
/// database restart or outage, and a token revoked meanwhile (on another service) stops working
/// at most this long after that service's last check.
pub const MAX_STALE: Duration = Duration::from_secs(15 * 60);
/// How long a check of a stale entry may wait for the database before the entry's verdict stands.
const STALE_PATIENCE: Duration = Duration::from_millis(250);
/// After a failed check, stale entries are believed without asking for this long.
const UNREACHABLE_PAUSE: Duration = Duration::from_secs(1);
/// Entries kept at most (secrets and model names each); past it stale entries are dropped, and if
/// that is not enough, all of them.
const MAX_ENTRIES: usize = 10_000;

/// Why a bearer was refused (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not an olps token, or no such token.
    Unknown,
    Expired,
    Revoked,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Unknown => {
                "the bearer token is not valid: give an API token (olps_…) from `olps token \
                 create` in the header 'Authorization: Bearer <token>'"
            }
            Refusal::Expired => "the bearer token has expired; create a new one",
            Refusal::Revoked => "the bearer token was revoked; create a new one",
        }
    }
}

/// Why a check could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot verify the token: {0}")]
pub struct VerifyError(#[from] pub sqlx::Error);

#[derive(Clone)]
enum Verdict {
    Valid(Arc<Principal>),
    Refused(Refusal),
}

struct Entry {
    verdict: Verdict,
    checked: Instant,
}

/// Verifies bearer secrets for one service; cheap to share (`Arc`).
pub struct Verifier {
    pool: PgPool,
    ttl: Duration,
    secrets: RwLock<HashMap<[u8; 32], Entry>>,
    names: RwLock<HashMap<String, (Option<Uuid>, Instant)>>,
    /// When a check last failed (the database unreachable).
    unreachable_at: Mutex<Option<Instant>>,
}

impl Verifier {
    pub fn new(pool: PgPool, ttl: Duration) -> Verifier {
        Verifier {
            pool,
            ttl,
            secrets: RwLock::new(HashMap::new()),
            names: RwLock::new(HashMap::new()),
            unreachable_at: Mutex::new(None),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Who holds `secret`, or why it is refused.
    pub async fn verify(
        &self,
        secret: &str,
    ) -> Result<Result<Arc<Principal>, Refusal>, VerifyError> {
        if !tokens::looks_like_secret(secret) {
            return Ok(Err(Refusal::Unknown));
        }
        let key = tokens::hash(secret);
        let cached = self
            .secrets
            .read()
            .expect("token cache lock")
            .get(&key)
            .map(|e| (e.verdict.clone(), e.checked.elapsed()));
        let verdict = match cached {
            Some((verdict, age)) if age < self.ttl => verdict,
            // The database is away (a restart, an outage): believe what it said last, so that
            // predictions keep being served from memory meanwhile; never past MAX_STALE, and
            // never for a secret it has not seen.
            Some((verdict, age)) if age < MAX_STALE && self.recently_unreachable() => verdict,
            stale => {
                let usable = stale.filter(|(_, age)| *age < MAX_STALE);
                match self
                    .patiently(usable.is_some(), tokens::lookup(&self.pool, &key))
                    .await
                {
                    Ok(found) => {
                        let verdict = match found {
                            None => Verdict::Refused(Refusal::Unknown),
                            Some(stored) => judge(stored),
                        };
                        self.remember(key, verdict.clone());
                        verdict
                    }
                    Err(e) => match usable {
                        Some((verdict, _)) => {
                            tracing::debug!(error = %e, "token check: database unreachable; the last verdict stands");
                            verdict
                        }
                        None => return Err(e.into()),
                    },
                }
            }
        };
        Ok(match verdict {
            Verdict::Valid(p) if p.expires_at.is_some_and(|t| t <= Utc::now()) => {
                Err(Refusal::Expired)
            }
            Verdict::Valid(p) => Ok(p),
            Verdict::Refused(r) => Err(r),
        })
    }

    /// Whether a check found the database unreachable within the last [`UNREACHABLE_PAUSE`].
    fn recently_unreachable(&self) -> bool {
        self.unreachable_at
            .lock()
            .expect("token cache lock")
            .is_some_and(|at| at.elapsed() < UNREACHABLE_PAUSE)
    }

    /// Runs a check against the database. With a last answer to fall back on, it waits at most
    /// [`STALE_PATIENCE`] (a pool retrying a refused connection would hold the request for its
    /// whole acquire timeout). A failure is remembered for [`UNREACHABLE_PAUSE`].
    async fn patiently<T>(
        &self,
        fallback: bool,
        check: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        let outcome = if fallback {
            tokio::time::timeout(STALE_PATIENCE, check)
                .await
                .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        } else {
            check.await
        };
        if outcome.is_err() {
            *self.unreachable_at.lock().expect("token cache lock") = Some(Instant::now());
        }
        outcome
    }

    fn remember(&self, key: [u8; 32], verdict: Verdict) {
        let mut secrets = self.secrets.write().expect("token cache lock");
        if secrets.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            secrets.retain(|_, e| e.checked.elapsed() < ttl);
            if secrets.len() >= MAX_ENTRIES {
                secrets.clear();
            }
        }
        secrets.insert(
            key,
            Entry {
                verdict,
                checked: Instant::now(),
            },
        );
    }

    /// Forgets what is cached about a token (this service revoked it: no waiting for the ttl).
    pub fn forget_token(&self, token_id: Uuid) {
        self.secrets.write().expect("token cache lock").retain(
            |_, e| !matches!(&e.verdict, Verdict::Valid(p) if p.token_id() == Some(token_id)),
        );
    }

    /// The UUID of a model given by UUID or name (`None`: no such model), for tokens limited to
    /// some models. Names are cached like secrets.
    pub async fn model_id(&self, key: &str) -> Result<Option<Uuid>, VerifyError> {
        if let Ok(id) = Uuid::parse_str(key) {
            return Ok(Some(id));
        }
        let cached = self
            .names
            .read()
            .expect("name cache lock")
            .get(key)
            .map(|(id, at)| (*id, at.elapsed()));
        if let Some((id, age)) = cached {
            if age < self.ttl {
                return Ok(id);
            }
        }
        let usable = cached.filter(|(_, age)| *age < MAX_STALE);
        if let Some((id, _)) = usable.filter(|_| self.recently_unreachable()) {
            return Ok(id);
        }
        let query = sqlx::query_scalar("SELECT model_id FROM models WHERE name = $1")
            .bind(key)
            .fetch_optional(&self.pool);
        let id: Option<Uuid> = match self.patiently(usable.is_some(), query).await {
            Ok(id) => id,
            // As for secrets: the last answer stands while the database is away.
            Err(_) if usable.is_some() => return Ok(usable.and_then(|(id, _)| id)),
            Err(e) => return Err(e.into()),
        };
        let mut names = self.names.write().expect("name cache lock");
        if names.len() >= MAX_ENTRIES {
            names.clear();
        }
        names.insert(key.to_string(), (id, Instant::now()));
        Ok(id)
    }
}

fn judge(stored: StoredToken) -> Verdict {
    if stored.revoked_at.is_some() {
        return Verdict::Refused(Refusal::Revoked);
    }
    // Expiry is checked per request (an entry may outlive it), not here.
    let scopes = Scopes::parse(&stored.scopes).unwrap_or_default();
    Verdict::Valid(Arc::new(Principal {
        actor: Actor::Token {
            token_id: stored.token_id,
            name: stored.name,
        },
        scopes,
        models: stored.model_ids,
        expires_at: stored.expires_at,
    }))
}
