//! API errors: `{"error":{"code","message","field"}}` with the right 4xx
//! status, the JSON body extractor that names the offending field, and
//! the layer that gives axum's own refusals the same shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use super::listing::ListError;
use crate::repo::RepoError;

/// An API error and its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

/// The error body every failed request gets.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `not_found`, `invalid_field`, `unauthorized` …
    pub code: String,
    pub message: String,
    /// The request field at fault, when one is.
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A request field with a bad value.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message)
        }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "already_exists", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::Invalid { field, detail } => ApiError::invalid(field, detail),
            RepoError::AlreadyExists { what } => {
                ApiError::conflict(format!("{what} already exists"))
            }
            // The store could not answer (no leader, shutting down), holds
            // something this build cannot read, or kept changing under a
            // retried write: not the client's fault, and worth a retry.
            RepoError::Store(_) | RepoError::Corrupt { .. } | RepoError::Conflict { .. } => {
                tracing::warn!(error = %e, "store request failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    e.to_string(),
                )
            }
        }
    }
}

impl From<ListError> for ApiError {
    fn from(e: ListError) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pbx\""),
            );
        }
        response
    }
}

/// A JSON request body; a body that does not parse gets 400 naming the
/// field at fault (`forwarding.busy.destination`), a body of another type
/// 415, an oversized one 413.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim();
                v.eq_ignore_ascii_case("application/json") || v.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                e.body_text(),
            )
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Deserializes a JSON document, naming the path of the first bad field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => Ok(value),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("the body is not valid JSON: {inner}"),
                ));
            }
            // serde reports a missing field at the path of the object
            // that lacks it: name the field itself.
            let message = inner.to_string();
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            let field = match (path.as_str(), missing) {
                (".", Some(name)) => Some(name.to_string()),
                (_, Some(name)) => Some(format!("{path}.{name}")),
                (".", None) => None,
                _ => Some(path),
            };
            Err(ApiError {
                field,
                ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            })
        }
    }
}

/// Gives responses that are not ours (axum's rejections of a path or
/// query, 404 for an unknown route, 405) the API's error shape. The web
/// portal's HTML error pages are its own and pass unchanged.
pub async fn uniform_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_ours = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            let v = v.as_bytes();
            v.starts_with(b"application/json") || v.starts_with(b"text/html")
        });
    if !(status.is_client_error() || status.is_server_error()) || is_ours {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such resource".to_string()),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed".to_string()),
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", text),
        s if s.is_server_error() => ("internal", "internal error".to_string()),
        _ => ("invalid_request", text),
    };
    let mut out = ApiError::new(status, code, message).into_response();
    // Keep what the refusal said besides its body (Allow on a 405).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
