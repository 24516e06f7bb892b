//! The device pages: search, one device, revoke and reset.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::audit::audit_table;
use super::forms::*;
use super::{Posted, Refused, SignedIn, enc, time_el};
use crate::api::devices::{self as dev, DeviceQuery, DeviceView};
use crate::api::{Api, ApiPath, ApiQuery};
use dynreg_store::Scope;

/// Devices per page of the device list.
const DEVICE_PAGE: usize = 50;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeviceSearch {
    #[serde(default)]
    pid: String,
    /// `unique`, `uuid`, `barcode` or `mac`.
    #[serde(default)]
    by: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(flatten)]
    flash: Flash,
}

pub(crate) async fn devices(
    s: SignedIn,
    State(api): State<Api>,
    Query(f): Query<DeviceSearch>,
) -> Result<Response, Refused> {
    let term = opt(&f.q);
    let by = if f.by.is_empty() {
        "unique"
    } else {
        f.by.as_str()
    };
    let mut q = DeviceQuery {
        pid: opt(&f.pid),
        state: opt(&f.state),
        unique: None,
        uuid: None,
        barcode: None,
        mac: None,
        since: None,
        limit: Some(DEVICE_PAGE),
        cursor: f.cursor.clone().filter(|c| !c.is_empty()),
    };
    match (by, term.clone()) {
        (_, None) => {}
        ("uuid", t) => q.uuid = t,
        ("barcode", t) => q.barcode = t,
        ("mac", t) => q.mac = t,
        (_, t) => q.unique = t,
    }
    let page = dev::list_devices(State(api), s.caller.clone(), ApiQuery(q)).await;
    let (items, next, error) = match page {
        Ok(p) => (p.0.items, p.0.next, None),
        Err(p) => (Vec::new(), None, Some(p.detail)),
    };
    let flash_msg = Flash {
        done: f.flash.done.clone(),
        error: error.or_else(|| f.flash.error.clone()),
    };
    let next_href = next.map(|c| {
        format!(
            "/devices?pid={}&by={}&q={}&state={}&cursor={}",
            enc(&f.pid),
            enc(by),
            enc(&f.q),
            enc(&f.state),
            enc(&c)
        )
    });
    let body = html! {
        h1 { "Devices" }
        (flash(&flash_msg))
        form.row.search method="get" action="/devices" role="search" {
            div.field {
                label for="f-by" { "Find by" }
                select #f-by name="by" {
                    @for (v, l) in [("unique", "unique"), ("uuid", "uuid"), ("barcode", "barcode"), ("mac", "MAC")] {
                        option value=(v) selected[by == v] { (l) }
                    }
                }
            }
            div.field { label for="f-q" { "Search" } input #f-q type="search" name="q" value=(f.q); }
            div.field { label for="f-pid" { "Product" } input #f-pid name="pid" value=(f.pid) size="12"; }
            div.field {
                label for="f-state" { "State" }
                select #f-state name="state" {
                    @for (v, l) in [("", "any"), ("active", "active"), ("revoked", "revoked")] {
                        option value=(v) selected[f.state == v] { (l) }
                    }
                }
            }
            button type="submit" { "Search" }
        }
        @if items.is_empty() { p.muted { "No devices match." } }
        @else { (device_table(&items)) }
        @if let Some(h) = next_href { p { a href=(h) rel="next" { "Next page" } } }
    };
    Ok(html(s.page("Devices", "devices", &body)))
}

fn device_table(items: &[DeviceView]) -> Markup {
    html! {
        table.cards #devices {
            thead { tr { th scope="col" { "Device" } th scope="col" { "Product" } th scope="col" { "uuid" } th scope="col" { "Barcode" } th scope="col" { "MAC" } th scope="col" { "State" } th scope="col" { "Registered" } } }
            tbody {
                @for d in items {
                    tr {
                        td data-label="Device" { a href={"/devices/" (enc(&d.key_pid)) "/" (enc(&d.unique))} { (d.unique) } }
                        td data-label="Product" { (d.pid) }
                        td data-label="uuid" { code { (d.uuid) } }
                        td data-label="Barcode" { (d.barcode) }
                        td data-label="MAC" { (d.mac) }
                        td data-label="State" { (d.state) }
                        td data-label="Registered" { (time_el(d.registered_at)) }
                    }
                }
            }
        }
    }
}

pub(crate) async fn device(
    s: SignedIn,
    State(api): State<Api>,
    Path((pid, unique)): Path<(String, String)>,
    Query(f): Query<Flash>,
) -> Result<Response, Refused> {
    let d = or_page(
        &s,
        dev::show_device(
            State(api),
            s.caller.clone(),
            ApiPath((pid.clone(), unique.clone())),
        )
        .await,
    )?
    .0;
    let base = format!("/devices/{}/{}", enc(&pid), enc(&unique));
    let body = html! {
        h1 { "Device " (unique) }
        (flash(&f))
        @if let Some(v) = &d.device {
            dl.facts {
                dt { "State" } dd #device-state { (v.state) }
                dt { "Product" } dd { a href={"/products/" (enc(&v.pid))} { (v.pid) } @if v.key_pid != v.pid { " (authenticates as " (v.key_pid) ")" } }
                dt { "uuid" } dd { code { (v.uuid) } }
                dt { "MAC" } dd { (v.mac) }
                dt { "Barcode" } dd { (v.barcode) }
                dt { "Registered" } dd { (time_el(v.registered_at)) }
                dt { "Last seen" } dd { (time_el(v.last_seen_at)) }
                @if let Some(r) = v.revoked_at { dt { "Revoked" } dd { (time_el(r)) } }
            }
            @if s.can(Scope::Write) {
                div.row {
                    @if v.revoked_at.is_none() {
                        form method="post" action={(base) "/revoke"} data-confirm={"Revoke " (unique) "? Its registrations will be refused and its triplet never handed out again."} {
                            (s.csrf_field()) button.danger type="submit" { "Revoke" }
                        }
                    } @else {
                        form method="post" action={(base) "/reset"} data-confirm={"Reset " (unique) "? It may then register again with a fresh triplet."} {
                            (s.csrf_field()) button type="submit" { "Reset" }
                        }
                    }
                }
            }
        } @else {
            p { "No device is registered as " (unique) " under " (pid) " now." }
        }
        @if !d.previous_triplets.is_empty() {
            h2 { "Triplets it held before resets" }
            table.cards {
                thead { tr { th scope="col" { "uuid" } th scope="col" { "Product" } th scope="col" { "Registered" } th scope="col" { "Reset" } } }
                tbody { @for h in &d.previous_triplets { tr { td data-label="uuid" { code { (h.uuid) } } td data-label="Product" { (h.pid) } td data-label="Registered" { (time_el(h.registered_at)) } td data-label="Reset" { (time_el(h.reset_at)) } } } }
            }
        }
        h2 { "History" }
        (audit_table(&d.audit))
    };
    Ok(html(s.page(&format!("Device {unique}"), "devices", &body)))
}

pub(crate) async fn revoke_device(
    State(api): State<Api>,
    Path((pid, unique)): Path<(String, String)>,
    Posted(s, _): Posted<Bytes>,
) -> Response {
    let to = format!("/devices/{}/{}", enc(&pid), enc(&unique));
    let action = dev::revoke_device(State(api), s.caller.clone(), ApiPath((pid, unique)));
    form_action(&to, "Revoked.", action).await
}

pub(crate) async fn reset_device(
    State(api): State<Api>,
    Path((pid, unique)): Path<(String, String)>,
    Posted(s, _): Posted<Bytes>,
) -> Response {
    let to = format!("/devices/{}/{}", enc(&pid), enc(&unique));
    let action = dev::reset_device(State(api), s.caller.clone(), ApiPath((pid, unique)));
    form_action(&to, "Reset: it may register again.", action).await
}
