//! The API's errors and inputs: every error is an RFC 9457 problem document
//! ([`Problem`]), and the extractors of JSON bodies ([`ApiJson`]), query strings
//! ([`ApiQuery`]) and path segments ([`ApiPath`]) answer one when the input does not
//! parse (axum's own extractors, with this rejection).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// A JSON body; a body that does not parse is a 400 problem.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(Problem))]
pub(crate) struct ApiJson<T>(pub(crate) T);

/// Query parameters; ones that do not parse are a 400 problem.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Problem))]
pub(crate) struct ApiQuery<T>(pub(crate) T);

/// Path parameters; ones that do not parse are a 400 problem.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Problem))]
pub(crate) struct ApiPath<T>(pub(crate) T);

impl From<JsonRejection> for Problem {
    fn from(e: JsonRejection) -> Self {
        Self::bad_request(e.body_text())
    }
}

impl From<QueryRejection> for Problem {
    fn from(e: QueryRejection) -> Self {
        Self::bad_request(e.body_text())
    }
}

impl From<PathRejection> for Problem {
    fn from(e: PathRejection) -> Self {
        Self::bad_request(e.body_text())
    }
}

/// An error answered as an RFC 9457 problem document
/// (`application/problem+json`): `type`, `title`, `status`, `detail`, and a stable
/// `code`; for a refused item of an import, its `line`.
#[derive(Debug)]
pub struct Problem {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) detail: String,
    pub(crate) line: Option<u64>,
}

/// The problem document's schema.
#[derive(Serialize, ToSchema)]
#[schema(as = Problem)]
pub(super) struct ProblemDoc {
    /// `urn:dynreg:problem:<code>`.
    r#type: String,
    /// The HTTP status's reason phrase.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What went wrong, for a person.
    detail: String,
    /// A stable code for programs: `unauthorized`, `forbidden`, `not_found`,
    /// `bad_request`, `invalid`, `conflict`, `invalid_item`, `unavailable`,
    /// `method_not_allowed`, `internal`.
    code: String,
    /// For `invalid_item` from an import: the CSV line refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
}

impl Problem {
    /// A problem with `status`, stable `code` and `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            line: None,
        }
    }

    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", detail)
    }

    pub(crate) fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    pub(crate) fn at_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    /// A refused uploaded CSV: `422 invalid_item` naming its `line` when the problem is
    /// on one, else `400 invalid`.
    pub(crate) fn csv(detail: String, line: Option<u64>) -> Self {
        match line {
            Some(line) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_item", detail).at_line(line)
            }
            None => Self::invalid(detail),
        }
    }
}

impl From<dynreg_store::Error> for Problem {
    fn from(e: dynreg_store::Error) -> Self {
        use dynreg_store::Error as E;
        match &e {
            E::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "not_found", m.clone()),
            E::Invalid(m) => Self::invalid(m.clone()),
            E::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m.clone()),
            E::Item { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_item",
                e.to_string(),
            ),
            // Also a database that cannot answer now (locked, unreachable, restarting).
            _ if e.kind() == dynreg_registrar::StoreErrorKind::Unavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            _ => {
                tracing::error!("admin API: {e}");
                Self::internal(e.to_string())
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let doc = ProblemDoc {
            r#type: format!("urn:dynreg:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
            line: self.line,
        };
        let mut r = (self.status, axum::Json(doc)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"dynreg\""),
            );
        }
        r
    }
}
