//! The API tokens page (admin scope): list, create, revoke.

use axum::Form;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::forms::*;
use super::{Posted, Refused, SignedIn, back_to, enc, time_el};
use crate::api::records::{self as rec, NewTokenBody};
use crate::api::{Api, ApiJson, ApiPath};

pub(crate) async fn tokens(
    s: SignedIn,
    State(api): State<Api>,
    Query(f): Query<Flash>,
) -> Result<Response, Refused> {
    let list = or_page(&s, rec::list_tokens(State(api), s.caller.clone()).await)?.0;
    let body = html! {
        h1 { "API tokens" }
        (flash(&f))
        table.cards {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Scope" } th scope="col" { "Created" } th scope="col" { "By" } th scope="col" { "State" } } }
            tbody {
                @for t in &list {
                    tr {
                        td data-label="Name" { (t.name) }
                        td data-label="Scope" { (t.scope) }
                        td data-label="Created" { (time_el(t.created_at)) }
                        td data-label="By" { (t.created_by) }
                        td data-label="State" {
                            @if let Some(r) = t.revoked_at { "revoked " (time_el(r)) }
                            @else {
                                form method="post" action={"/tokens/" (enc(&t.name)) "/revoke"} data-confirm={"Revoke token " (t.name) "?"} {
                                    (s.csrf_field()) button.danger type="submit" aria-label={"Revoke token " (t.name)} { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "New token" }
        form.row method="post" action="/tokens" {
            (s.csrf_field())
            (field("name", "Name", "text", "", true, ""))
            div.field {
                label for="f-scope" { "Scope" }
                select #f-scope name="scope" { option value="read" { "read" } option value="write" { "write" } option value="admin" { "admin" } }
            }
            button type="submit" { "Create token" }
        }
    };
    Ok(html(s.page("API tokens", "tokens", &body)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct TokenForm {
    name: String,
    scope: String,
}

pub(crate) async fn create_token(
    State(api): State<Api>,
    Posted(s, Form(f)): Posted<Form<TokenForm>>,
) -> Response {
    let body = NewTokenBody {
        name: f.name.trim().to_owned(),
        scope: f.scope,
    };
    match rec::create_token(State(api), s.caller.clone(), ApiJson(body)).await {
        Ok((_, t)) => secret_page(
            &s,
            "Token created",
            &html! { p { "Token " strong { (t.0.info.name) } " (" (t.0.info.scope) "). dynreg keeps only its hash: copy it now." } },
            &t.0.token,
            "/tokens",
        ),
        Err(p) => back_to("/tokens", Err(p)),
    }
}

pub(crate) async fn revoke_token(
    State(api): State<Api>,
    Path(name): Path<String>,
    Posted(s, _): Posted<Bytes>,
) -> Response {
    let done = format!("Token {name} revoked.");
    let action = rec::revoke_token(State(api), s.caller.clone(), ApiPath(name));
    form_action("/tokens", &done, action).await
}
