//! /v1/models/{m}/challengers: shadow models ([`crate::shadow`]) — link, list, unlink, promote.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ErrorBody;
use super::{parse_json, retry, ApiError, AppState};
use crate::auth::Principal;
use crate::models::{self, Model, ModelError};
use crate::shadow::links::{self, Link};
use crate::shadow::promote::{self, Promotion};
use crate::shadow::ShadowError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, add))
        .routes(routes!(remove))
        .routes(routes!(promote_challenger))
}

impl From<ShadowError> for ApiError {
    fn from(e: ShadowError) -> Self {
        match e {
            ShadowError::Model(e) => e.into(),
            ShadowError::Settings(e) => e.into(),
            ShadowError::Timeline(e) => e.into(),
            ShadowError::Db(e) => e.into(),
            ShadowError::NotLinked { .. } => ApiError::not_found(e.to_string()),
            ShadowError::AlreadyLinked { .. } | ShadowError::Cycle { .. } => {
                ApiError::conflict(e.to_string())
            }
            ShadowError::SelfLink(_) | ShadowError::KindMismatch { .. } => {
                ApiError::bad_request(e.to_string())
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddChallenger {
    challenger: String,
}

/// The body of POST /v1/models/{m}/challengers.
#[derive(ToSchema)]
#[schema(as = AddChallenger)]
#[allow(dead_code)]
pub struct AddChallengerDoc {
    /// The challenger's UUID or name: a model of the same kind, not yet a challenger.
    challenger: String,
}

/// A challenger of a model.
#[derive(ToSchema)]
#[schema(as = ChallengerLink)]
#[allow(dead_code)]
pub struct LinkDoc {
    champion_id: uuid::Uuid,
    challenger_id: uuid::Uuid,
    challenger_name: String,
    /// The champion's version when the link was made: every event it learned after it is
    /// copied to the challenger.
    since_version: i64,
    added_at: String,
    added_by: Option<String>,
}

/// What a promotion did: a new version of the champion with the challenger's parameters.
#[derive(ToSchema)]
#[schema(as = Promotion)]
#[allow(dead_code)]
pub struct PromotionDoc {
    model_id: uuid::Uuid,
    /// The champion's new version.
    version: i64,
    previous_version: i64,
    challenger_id: uuid::Uuid,
    challenger: String,
    /// The challenger's version whose parameters were taken.
    challenger_version: i64,
    /// Parameters whose state changed (one history row each).
    parameters_changed: i64,
    /// Of those, the ones the challenger does not have, set to their initial state.
    parameters_zeroed: i64,
    examples_seen: i64,
    /// The settings fields that changed.
    settings_changed: Vec<String>,
    promoted_by: String,
    promoted_at: String,
}

/// Who is asking (a `--no-auth` service: nobody in particular).
fn caller(principal: Option<Extension<Arc<Principal>>>) -> Principal {
    principal.map_or_else(Principal::no_auth, |Extension(p)| (*p).clone())
}

/// The challenger a request names, as the caller may see it: a token limited to other models
/// gets the answer a missing model gets.
async fn challenger(state: &AppState, key: &str, caller: &Principal) -> Result<Model, ApiError> {
    if key.contains('\0') {
        return Err(ApiError::bad_request(
            crate::validation::Invalid::new("challenger", crate::validation::Problem::Nul)
                .to_string(),
        ));
    }
    let model = models::find(&state.pool, key).await?;
    if !caller.sees_model(model.model_id) {
        return Err(ModelError::NotFound(key.to_string()).into());
    }
    Ok(model)
}

/// The model's challengers, by name.
#[utoipa::path(
    get,
    path = "/v1/models/{model}/challengers",
    tag = "challengers",
    params(("model" = String, Path, description = "The champion's UUID or name")),
    responses(
        (status = 200, description = "Its challengers", body = Vec<LinkDoc>),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Vec<Link>>, ApiError> {
    let model = models::find(&state.pool, &model).await?;
    Ok(Json(links::list(&state.pool, model.model_id).await?))
}

/// Makes a model a challenger: from the champion's next batch on, it receives a copy of every
/// event the champion learns, in the champion's order.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/challengers",
    tag = "challengers",
    params(("model" = String, Path, description = "The champion's UUID or name")),
    request_body = AddChallengerDoc,
    responses(
        (status = 201, description = "Linked", body = LinkDoc),
        (status = 400, description = "The model itself, or one of another kind", body = ErrorBody),
        (status = 404, description = "No such model or challenger", body = ErrorBody),
        (status = 409, description = "Already a challenger, or the link would make a circle", body = ErrorBody),
    )
)]
async fn add(
    State(state): State<AppState>,
    principal: Option<Extension<Arc<Principal>>>,
    Path(model): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Link>), ApiError> {
    let request: AddChallenger = parse_json(body)?;
    let caller = caller(principal);
    let champion = models::find(&state.pool, &model).await?;
    let challenger = challenger(&state, &request.challenger, &caller).await?;
    let by = crate::auth::changed_by(Some(&caller));
    let (pool, champion, challenger, by) = (&state.pool, &champion, &challenger, &by);
    let link = retry::transient("add challenger", || async move {
        let mut tx = pool.begin().await?;
        let link = links::add(&mut tx, champion, challenger, by).await?;
        tx.commit().await?;
        Ok::<_, ShadowError>(link)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(link)))
}

/// Ends a link; the events already copied stay with the challenger.
#[utoipa::path(
    delete,
    path = "/v1/models/{model}/challengers/{challenger}",
    tag = "challengers",
    params(
        ("model" = String, Path, description = "The champion's UUID or name"),
        ("challenger" = String, Path, description = "The challenger's UUID or name"),
    ),
    responses(
        (status = 200, description = "The link removed", body = LinkDoc),
        (status = 404, description = "No such model, or not its challenger", body = ErrorBody),
    )
)]
async fn remove(
    State(state): State<AppState>,
    principal: Option<Extension<Arc<Principal>>>,
    Path((model, key)): Path<(String, String)>,
) -> Result<Json<Link>, ApiError> {
    let caller = caller(principal);
    let champion = models::find(&state.pool, &model).await?;
    let challenger = challenger(&state, &key, &caller).await?;
    let (pool, champion, challenger) = (&state.pool, &champion, &challenger);
    let link = retry::transient("remove challenger", || async move {
        let mut tx = pool.begin().await?;
        let link = links::remove(&mut tx, champion, challenger).await?;
        tx.commit().await?;
        Ok::<_, ShadowError>(link)
    })
    .await?;
    Ok(Json(link))
}

/// The champion takes the challenger's parameters, optimizer state, example count and settings
/// as one new version (a rollback past it restores the old parameters). Waits for a batch of
/// either in progress.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/challengers/{challenger}/promote",
    tag = "challengers",
    params(
        ("model" = String, Path, description = "The champion's UUID or name"),
        ("challenger" = String, Path, description = "The challenger's UUID or name"),
    ),
    responses(
        (status = 200, description = "Promoted: the champion's new version", body = PromotionDoc),
        (status = 404, description = "No such model, or not its challenger", body = ErrorBody),
    )
)]
async fn promote_challenger(
    State(state): State<AppState>,
    principal: Option<Extension<Arc<Principal>>>,
    Path((model, key)): Path<(String, String)>,
) -> Result<Json<Promotion>, ApiError> {
    let caller = caller(principal);
    let champion = models::find(&state.pool, &model).await?;
    let challenger = challenger(&state, &key, &caller).await?;
    let by = caller.describe();
    let (pool, champion, challenger, by) = (&state.pool, &champion, &challenger, &by);
    let promotion = retry::transient("promote challenger", || async move {
        let mut tx = pool.begin().await?;
        let promotion = promote::promote(&mut tx, champion, challenger, by).await?;
        tx.commit().await?;
        Ok::<_, ShadowError>(promotion)
    })
    .await?;
    Ok(Json(promotion))
}
