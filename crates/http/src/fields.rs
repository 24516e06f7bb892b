//! The fields of a hook request, however the broker sends them: a JSON object (EMQX's
//! default), a form body (RabbitMQ with `http_method = post`, EMQX configured so), or
//! a query string (RabbitMQ's default `GET`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Name/value pairs in the order sent. Values of JSON numbers and booleans are their
/// JSON text (`1`, `true`); JSON nulls are left out.
#[derive(Debug, Default)]
pub(crate) struct Fields(Vec<(String, String)>);

impl Fields {
    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn form(bytes: &[u8]) -> Self {
        Self(form_urlencoded::parse(bytes).into_owned().collect())
    }

    fn json(bytes: &[u8]) -> Result<Self, String> {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes)
            .map_err(|e| format!("the body is not a JSON object: {e}"))?;
        Ok(Self(
            map.into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some((k, s)),
                    other => Some((k, other.to_string())),
                })
                .collect(),
        ))
    }
}

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if req.method() == Method::GET {
            return Ok(req
                .uri()
                .query()
                .map(|q| Self::form(q.as_bytes()))
                .unwrap_or_default());
        }
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if json {
            Self::json(&bytes).map_err(|e| (StatusCode::BAD_REQUEST, e).into_response())
        } else {
            Ok(Self::form(&bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_become_text_and_forms_decode() {
        let f = Fields::json(br#"{"clientid":"c","qos":1,"retain":false,"x":null}"#).unwrap();
        assert_eq!(f.get("clientid"), Some("c"));
        assert_eq!(f.get("qos"), Some("1"));
        assert_eq!(f.get("retain"), Some("false"));
        assert_eq!(f.get("x"), None);
        assert!(Fields::json(b"[1]").unwrap_err().contains("JSON object"));
        let f = Fields::form(b"username=p1%7CsignMethod%3Dx&variable_map.client_id=register_p1_u1");
        assert_eq!(f.get("username"), Some("p1|signMethod=x"));
        assert_eq!(f.get("variable_map.client_id"), Some("register_p1_u1"));
    }
}
