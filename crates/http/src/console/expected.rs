//! The console's page of a product's expected devices (`admission = listed`): the
//! counts, the upload of the factory's CSV (with progress and the refused line), the
//! list (all, or those not registered yet) and removal. Over the admin API's handlers,
//! like every page.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::forms::{Flash, csv_upload, flash, form_action, html, or_page};
use super::{Posted, Refused, SignedIn, enc, time_el};
use crate::api::expected::{self as exp, ExpectedQuery};
use crate::api::products as prod;
use crate::api::{Api, ApiPath, ApiQuery};
use dynreg_store::Scope;

/// The page's query: the flash message and which devices to list.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ExpectedPageQuery {
    #[serde(flatten)]
    flash: Flash,
    #[serde(default)]
    waiting: Option<bool>,
    #[serde(default)]
    after: Option<String>,
}

pub(crate) async fn page(
    s: SignedIn,
    State(api): State<Api>,
    Path(pid): Path<String>,
    Query(q): Query<ExpectedPageQuery>,
) -> Result<Response, Refused> {
    let p = or_page(
        &s,
        prod::show_product(State(api.clone()), s.caller.clone(), ApiPath(pid.clone())).await,
    )?
    .0;
    let waiting = q.waiting.unwrap_or(false);
    let list = or_page(
        &s,
        exp::list_expected(
            State(api),
            s.caller.clone(),
            ApiPath(pid.clone()),
            ApiQuery(ExpectedQuery {
                waiting: Some(waiting),
                after: q.after.clone(),
                limit: Some(100),
            }),
        )
        .await,
    )?
    .0;
    let base = format!("/products/{}/expected", enc(&p.pid));
    let write = s.can(Scope::Write);
    let body = html! {
        h1 { "Expected devices of " a href={"/products/" (enc(&p.pid))} { (p.pid) } }
        (flash(&q.flash))
        p {
            @if p.admission == dynreg_registrar::Admission::Listed { "Only these devices may register: any other unique is refused at CONNECT." }
            @else { strong { "The product admits any device (admission open): " } "the list takes effect when the product's admission is set to listed (its Edit form)." }
        }
        dl.facts.counts {
            dt { "Listed" } dd #expected-count { (p.stats.expected) }
            dt { "Not registered yet" } dd { (p.stats.expected_waiting) }
        }
        @if write {
            h2 { "Upload" }
            form #expect data-upload data-action=(base) data-csrf=(s.csrf) data-count="listed_now" data-noun="devices listed" {
                div.field {
                    label for="f-expected" { "Expected devices CSV (unique[,barcode[,mac]])" }
                    input #f-expected type="file" name="file" accept=".csv,text/csv" required;
                    small { "A header line is optional. A unique listed again gets the new barcode and MAC. A refused line lists nothing." }
                }
                button type="submit" { "Upload" }
                progress max="100" value="0" hidden {}
                div role="status" aria-live="polite" {}
            }
        }
        h2 { @if waiting { "Not registered yet" } @else { "Listed devices" } }
        p {
            @if waiting { a href=(base) { "Show all" } } @else { a href={(base) "?waiting=true"} { "Show those not registered yet" } }
        }
        @if list.items.is_empty() { p.muted { "None." } }
        @else {
            table.cards {
                thead { tr { th scope="col" { "Unique" } th scope="col" { "Barcode" } th scope="col" { "MAC" } th scope="col" { "Listed" } th scope="col" { "Registered" } @if write { th scope="col" { span.visually-hidden { "Remove" } } } } }
                tbody {
                    @for e in &list.items {
                        tr {
                            td data-label="Unique" { @if e.registered_at.is_some() { a href={"/devices/" (enc(&p.pid)) "/" (enc(&e.unique))} { (e.unique) } } @else { (e.unique) } }
                            td data-label="Barcode" { (e.barcode) }
                            td data-label="MAC" { (e.mac) }
                            td data-label="Listed" { (time_el(e.listed_at)) }
                            td data-label="Registered" { @if let Some(t) = e.registered_at { (time_el(t)) } @else { "-" } }
                            @if write {
                                td {
                                    form method="post" action={(base) "/" (enc(&e.unique)) "/remove"} data-confirm={"Remove " (e.unique) " from the list?"} {
                                        (s.csrf_field())
                                        button.secondary type="submit" aria-label={"Remove " (e.unique)} { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = &list.next {
                p { a href={(base) "?after=" (enc(next)) @if waiting { "&waiting=true" }} { "Next page" } }
            }
        }
    };
    Ok(html(s.page(
        &format!("Expected devices of {}", p.pid),
        "products",
        &body,
    )))
}

/// The CSV uploaded by the page's script (the API's `{"listed_now", "listed"}` back);
/// see [`super::forms::csv_upload`].
pub(crate) async fn upload(
    State(api): State<Api>,
    Path(pid): Path<String>,
    Posted(s, body): Posted<Bytes>,
) -> Response {
    let upload = exp::upload_expected(State(api), s.caller.clone(), ApiPath(pid), body);
    csv_upload(upload).await
}

pub(crate) async fn remove(
    State(api): State<Api>,
    Path((pid, unique)): Path<(String, String)>,
    Posted(s, _): Posted<Bytes>,
) -> Response {
    let to = format!("/products/{}/expected", enc(&pid));
    let done = format!("{unique} removed from the list.");
    form_action(
        &to,
        &done,
        exp::remove_expected(State(api), s.caller.clone(), ApiPath((pid, unique))),
    )
    .await
}
