//! What the console's pages share: the flash messages, form values, error pages,
//! and the two shapes of an action (a form, an upload).

use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Refused, SignedIn, back_to, no_store};
use crate::api::Problem;

/// The messages a redirect carries (`done`, `error`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Flash {
    #[serde(default)]
    pub(super) done: Option<String>,
    #[serde(default)]
    pub(super) error: Option<String>,
}

pub(super) fn flash(f: &Flash) -> Markup {
    html! {
        @if let Some(d) = &f.done { p.flash.done role="status" { (d) } }
        @if let Some(e) = &f.error { p.flash.error role="alert" { (e) } }
    }
}

pub(super) fn html(page: Markup) -> Response {
    Html(page.into_string()).into_response()
}

/// A trimmed, non-empty form value.
pub(super) fn opt(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// A number field (empty: none); the error names the field.
pub(super) fn num(field: &str, v: &str) -> Result<Option<u64>, Problem> {
    opt(v)
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| Problem::invalid(format!("{field}: `{t}` is not a whole number")))
        })
        .transpose()
}

/// Runs an API call; its problem becomes an error page.
pub(super) fn or_page<T>(s: &SignedIn, r: Result<T, Problem>) -> Result<T, Refused> {
    r.map_err(|p| Refused::from(s.page_problem(&p)))
}

/// A form of one API action (its CSRF token checked by [`Posted`]): runs `action`,
/// and goes back to `to` saying `done`, or what the API refused.
pub(super) async fn form_action<T>(
    to: &str,
    done: &str,
    action: impl std::future::Future<Output = Result<T, Problem>>,
) -> Response {
    back_to(to, action.await.map(|_| done.to_owned()))
}

/// A CSV uploaded by a page's script (`data-upload` in app.js; its CSRF token
/// checked by [`Posted`]): answers with what the API's handler `upload` answers (its
/// JSON, or its problem document with the refused `line`). The one way every console
/// upload is taken.
pub(super) async fn csv_upload<T: IntoResponse>(
    upload: impl std::future::Future<Output = Result<T, Problem>>,
) -> Response {
    match upload.await {
        Ok(j) => j.into_response(),
        Err(p) => p.into_response(),
    }
}

/// A labelled input.
pub(super) fn field(
    name: &str,
    label: &str,
    kind: &str,
    value: &str,
    required: bool,
    hint: &str,
) -> Markup {
    let id = format!("f-{name}");
    let hint_id = format!("{id}-hint");
    html! {
        div.field {
            label for=(id) { (label) }
            input id=(id) name=(name) type=(kind) value=(value) required[required] min=[(kind == "number").then_some("0")] aria-describedby=[(!hint.is_empty()).then_some(&hint_id)];
            @if !hint.is_empty() { small id=(hint_id) { (hint) } }
        }
    }
}

/// A page showing a secret once (never cached), then `next`.
pub(super) fn secret_page(
    s: &SignedIn,
    title: &str,
    intro: &Markup,
    secret: &str,
    next: &str,
) -> Response {
    let body = html! {
        h1 { (title) }
        (intro)
        div.secret {
            label for="secret" { "Secret (shown only now)" }
            input #secret type="text" readonly value=(secret) data-copyable;
            button type="button" data-copy="secret" { "Copy" }
            span #copied role="status" aria-live="polite" {}
        }
        p { a.button href=(next) { "Done" } }
    };
    no_store(s.page(title, "products", &body))
}
