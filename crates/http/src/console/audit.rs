//! The audit log page.

use axum::extract::{Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::forms::*;
use super::{Refused, SignedIn, enc, time_el};
use crate::api::records::{self as rec, AuditQuery, AuditView};
use crate::api::{Api, ApiQuery};

/// Audit lines per page.
const AUDIT_PAGE: usize = 100;

pub(super) fn audit_table(lines: &[AuditView]) -> Markup {
    html! {
        @if lines.is_empty() { p.muted { "Nothing recorded." } }
        @else {
            table.cards {
                thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "From" } th scope="col" { "What" } th scope="col" { "Product" } th scope="col" { "Target" } th scope="col" { "uuid" } } }
                tbody {
                    @for a in lines {
                        tr {
                            td data-label="When" { (time_el(a.at)) }
                            td data-label="Who" { (a.actor) }
                            td data-label="From" { (a.origin) }
                            td data-label="What" { (a.action) }
                            td data-label="Product" { (a.pid) }
                            td data-label="Target" { (a.target) }
                            td data-label="uuid" { code { (a.uuid) } }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditSearch {
    #[serde(default)]
    pid: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    before: Option<u64>,
}

pub(crate) async fn audit(
    s: SignedIn,
    State(api): State<Api>,
    Query(f): Query<AuditSearch>,
) -> Result<Response, Refused> {
    let q = AuditQuery {
        pid: opt(&f.pid),
        target: opt(&f.target),
        uuid: None,
        actor: opt(&f.actor),
        action: opt(&f.action),
        since: None,
        before: f.before,
        limit: Some(AUDIT_PAGE),
    };
    let (lines, next, error) =
        match rec::list_audit(State(api), s.caller.clone(), ApiQuery(q)).await {
            Ok(p) => (p.0.items, p.0.next, None),
            Err(p) => (Vec::new(), None, Some(p.detail)),
        };
    let body = html! {
        h1 { "Audit log" }
        (flash(&Flash { done: None, error }))
        form.row.search method="get" action="/audit" role="search" {
            div.field { label for="f-pid" { "Product" } input #f-pid name="pid" value=(f.pid) size="12"; }
            div.field { label for="f-actor" { "Who" } input #f-actor name="actor" value=(f.actor) size="14"; }
            div.field { label for="f-action" { "What" } input #f-action name="action" value=(f.action) size="18" aria-describedby="f-action-hint"; small #f-action-hint { "e.g. device.revoked, or device. for all" } }
            div.field { label for="f-target" { "Target" } input #f-target name="target" value=(f.target) size="14"; }
            button type="submit" { "Filter" }
        }
        (audit_table(&lines))
        @if let Some(n) = next {
            p { a rel="next" href={"/audit?pid=" (enc(&f.pid)) "&actor=" (enc(&f.actor)) "&action=" (enc(&f.action)) "&target=" (enc(&f.target)) "&before=" (n)} { "Older" } }
        }
    };
    Ok(html(s.page("Audit log", "audit", &body)))
}
