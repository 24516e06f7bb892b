//! Signing in with an API token, and out.

use axum::Form;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::forms::*;
use super::{Posted, see_other};
use crate::api::{Api, Caller};

#[derive(Debug, Deserialize)]
pub(crate) struct Next {
    #[serde(default)]
    next: Option<String>,
}

/// Only paths of this site (not `//host`).
fn local(next: Option<&str>) -> &str {
    next.filter(|n| n.starts_with('/') && !n.starts_with("//"))
        .unwrap_or("/")
}

fn sign_in_page(next: &str, error: Option<&str>) -> Markup {
    super::layout(
        "Sign in",
        &html! {
            main id="main" .narrow {
                h1 { "dynreg" }
                p { "Sign in with an API token (" code { "dynreg token create --name NAME --scope read|write|admin" } ")." }
                @if let Some(e) = error { p.flash.error role="alert" { (e) } }
                form method="post" action="/sign-in" {
                    input type="hidden" name="next" value=(next);
                    label for="token" { "API token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

pub(crate) async fn sign_in_form(Query(q): Query<Next>) -> Response {
    html(sign_in_page(local(q.next.as_deref()), None))
}

#[derive(Debug, Deserialize)]
pub(crate) struct SignIn {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

pub(crate) async fn sign_in(
    State(api): State<Api>,
    headers: HeaderMap,
    Form(f): Form<SignIn>,
) -> Response {
    let next = local(f.next.as_deref()).to_owned();
    // No session yet, so no CSRF token: a sign-in posted from another site (which
    // would sign the browser in as someone else) is refused by its Origin.
    // (Behind a proxy that rewrites Host, the host the browser used is in
    // X-Forwarded-Host.)
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|h| h.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if let (Some(origin), Some(host)) = (origin, host) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if origin_host != host {
            let why = "Sign in from this site's own page.";
            return (
                StatusCode::FORBIDDEN,
                Html(sign_in_page(&next, Some(why)).into_string()),
            )
                .into_response();
        }
    }
    let token = f.token.trim();
    match Caller::of_token(&api, token, String::new()).await {
        Ok(_) => {
            let tls = crate::auth::came_over_tls(&headers);
            let mut r = see_other(&next);
            r.headers_mut()
                .insert(header::SET_COOKIE, crate::auth::session_cookie(token, tls));
            r
        }
        Err(p) => {
            let why = if p.status == StatusCode::UNAUTHORIZED {
                "That token is unknown or revoked.".to_owned()
            } else {
                p.detail
            };
            (
                p.status,
                Html(sign_in_page(&next, Some(&why)).into_string()),
            )
                .into_response()
        }
    }
}

pub(crate) async fn sign_out(Posted(s, _): Posted<Bytes>) -> Response {
    let mut r = see_other("/sign-in");
    r.headers_mut()
        .insert(header::SET_COOKIE, crate::auth::session_cookie("", s.tls));
    r
}
