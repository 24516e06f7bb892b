//! The dashboard: live registrations, refusals, low pools, waiting devices, the
//! outbox.

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};

use super::forms::*;
use super::{Refused, SignedIn, enc, time_el};
use crate::api::products as prod;
use crate::api::records::{self as rec, AuditView, RegistrationQuery};
use crate::api::{Api, ApiQuery};
use dynreg_store::ProductSummary;

pub(crate) async fn dashboard(s: SignedIn, State(api): State<Api>) -> Result<Response, Refused> {
    let products = or_page(
        &s,
        prod::list_products(State(api.clone()), s.caller.clone()).await,
    )?
    .0;
    let outbox = or_page(
        &s,
        rec::outbox_status(State(api.clone()), s.caller.clone()).await,
    )?
    .0;
    let recent = or_page(
        &s,
        rec::recent_registrations(
            State(api.clone()),
            s.caller.clone(),
            ApiQuery(RegistrationQuery {
                pid: None,
                since: None,
                before: None,
                limit: Some(20),
            }),
        )
        .await,
    )?
    .0;
    let low: Vec<&ProductSummary> = products.iter().filter(|p| p.stats.low).collect();
    let waiting: Vec<&ProductSummary> = products
        .iter()
        .filter(|p| p.stats.expected_waiting > 0)
        .collect();
    let refusals = api.metrics.refusals();
    let body = html! {
        h1 { "Dashboard" }
        section aria-labelledby="rate-h" {
            h2 #rate-h { "Registrations per second" }
            p.muted { "Live, from this console's event stream (the last 60 seconds)." }
            div.chart {
                svg #rate viewBox="0 0 600 120" preserveAspectRatio="none" role="img" aria-label="Registrations per second, last 60 seconds" {
                    polyline #rate-line points="" {}
                }
                p { "Now: " strong #rate-now { "0" } "/s · in view: " strong #rate-total { "0" } }
            }
        }
        div.grid {
            section aria-labelledby="latest-h" {
                h2 #latest-h { "Latest registrations" }
                table #latest data-stream="/api/v1/registrations/stream" {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Product" } th scope="col" { "Device" } th scope="col" { "Triplet" } } }
                    tbody {
                        @for r in &recent.items { (registration_row(r)) }
                    }
                }
                @if recent.items.is_empty() { p #latest-empty .muted { "No registrations yet." } }
            }
            section aria-labelledby="state-h" {
                h2 #state-h { "Health" }
                h3 { "Refused CONNECTs by cause (this instance)" }
                @if refusals.is_empty() { p.muted { "None since it started." } }
                @else {
                    table { tbody { @for (cause, n) in &refusals { tr { th scope="row" { (cause) } td.num { (n) } } } } }
                }
                h3 { "Pools running low" }
                @if low.is_empty() { p.muted { "None below its low-water mark." } }
                @else {
                    ul { @for p in &low { li { a href={"/products/" (enc(&p.pid))} { (p.pid) } ": " (p.stats.free) " free, mark " (p.stats.low_water.unwrap_or(0)) } } }
                }
                h3 { "Expected devices not registered yet" }
                @if waiting.is_empty() { p.muted { "None: every listed device has registered." } }
                @else {
                    ul { @for p in &waiting { li { a href={"/products/" (enc(&p.pid)) "/expected?waiting=true"} { (p.pid) } ": " (p.stats.expected_waiting) " of " (p.stats.expected) " listed" } } }
                }
                h3 { "Event outbox" }
                p { @if outbox.on { (outbox.backlog) " events waiting for delivery" } @else { "Off (no webhook or broker events)." } }
            }
        }
    };
    Ok(html(s.page("Dashboard", "dashboard", &body)))
}

fn registration_row(r: &AuditView) -> Markup {
    html! {
        tr {
            td { (time_el(r.at)) }
            td { a href={"/products/" (enc(&r.pid))} { (r.pid) } }
            td { a href={"/devices/" (enc(&r.pid)) "/" (enc(&r.target))} { (r.target) } }
            td { code { (r.uuid) } }
        }
    }
}
