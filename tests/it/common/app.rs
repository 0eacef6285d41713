//! The HTTP service on port 0, and a client for it.

use std::time::Duration;

use olps::http::AppState;
use olps::serving::ServingConfig;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::TestDb;

/// A service on port 0, whose shutdown can be awaited; it is cancelled when dropped. Tokens are
/// on, as in production: `client` sends an admin token for every model (`token`) with each
/// request, so a test sees the same answers as before tokens existed; `tests/it/access.rs`
/// covers the answers without one.
pub struct Service {
    pub base: String,
    pub client: reqwest::Client,
    /// The admin token `client` sends (None when the state was built with --no-auth).
    pub token: Option<String>,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Service {
    /// The service over `pool` with its own serving settings.
    pub async fn start(pool: &PgPool, config: ServingConfig) -> Service {
        Service::start_with(AppState::with_serving(pool.clone(), config)).await
    }

    pub async fn start_with(state: AppState) -> Service {
        let token = if state.access.config.require_tokens {
            // On a connection of its own: the service's pool may be sized to be exhausted.
            let options = (*state.pool.connect_options()).clone();
            let own = sqlx::PgPool::connect_with(options).await.expect("connect");
            let secret = admin_token(&own).await;
            own.close().await;
            Some(secret)
        } else {
            None
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(secret) = &token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {secret}").parse().unwrap(),
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(olps::http::serve(listener, state, shutdown.clone()));
        Service {
            base,
            token,
            client: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap(),
            shutdown,
            handle: Some(handle),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    /// The body of a GET as text.
    pub async fn text(&self, path: &str) -> String {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .unwrap()
    }

    /// Creates a model over HTTP and returns its UUID.
    pub async fn create_model(&self, name: &str, kind: &str) -> uuid::Uuid {
        let (status, body) = self
            .post(
                "/v1/models",
                &serde_json::json!({"name": name, "kind": kind}),
            )
            .await;
        assert_eq!(status, 201, "create model: {body}");
        body["model_id"].as_str().unwrap().parse().unwrap()
    }

    /// Graceful shutdown: waits until the server (and its prediction log) has stopped.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("shutdown within 30 s")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A new admin token for every model in the database of `pool`; its secret.
pub async fn admin_token(pool: &PgPool) -> String {
    token_with(pool, &["admin"], &[]).await
}

/// A new token with these scopes, limited to these models (none: every model); its secret.
pub async fn token_with(pool: &PgPool, scopes: &[&str], models: &[&str]) -> String {
    let new = olps::auth::tokens::NewToken {
        name: super::unique_name("test-token"),
        scopes: olps::auth::Scopes::parse(scopes).unwrap(),
        models: models.iter().map(|m| m.to_string()).collect(),
        expires_in: None,
    };
    olps::auth::tokens::create(pool, &new, &olps::auth::Principal::cli())
        .await
        .expect("create a token")
        .secret
}

/// The status and the body (JSON, else the text as a JSON string).
pub async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// The service with the default settings over a fresh database of its own. Its requests are
/// `Service`'s (`app.get(..)`, `app.post(..)`, `app.base`).
pub struct TestApp {
    // Declared first, so dropped first: the service stops before its database is dropped.
    service: Service,
    pub db: TestDb,
}

pub async fn spawn_app() -> TestApp {
    let db = TestDb::new().await;
    let service = Service::start_with(AppState::new(db.pool.clone())).await;
    TestApp { service, db }
}

impl TestApp {
    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }
}

impl std::ops::Deref for TestApp {
    type Target = Service;

    fn deref(&self) -> &Service {
        &self.service
    }
}
