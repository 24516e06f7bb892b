//! The product pages: the list, creating, one product's page, editing, enabling,
//! rotating and retiring its secret.

use axum::Form;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::forms::*;
use super::{Posted, Refused, SignedIn, back_to, enc, time_el};
use crate::api::products::{self as prod, NewProductBody, ProductPatch, RotateBody};
use crate::api::{Api, ApiJson, ApiPath, Problem};
use dynreg_registrar::{Admission, Signatures};
use dynreg_store::Scope;

pub(crate) async fn products(
    s: SignedIn,
    State(api): State<Api>,
    Query(f): Query<Flash>,
) -> Result<Response, Refused> {
    let list = or_page(&s, prod::list_products(State(api), s.caller.clone()).await)?.0;
    let body = html! {
        h1 { "Products" }
        (flash(&f))
        @if list.is_empty() { p.muted { "No products yet." } }
        @else {
            table.cards {
                thead { tr { th scope="col" { "Product" } th scope="col" { "Name" } th scope="col" { "State" } th scope="col" { "Mode" } th scope="col" { "Free" } th scope="col" { "Devices" } } }
                tbody {
                    @for p in &list {
                        tr {
                            td data-label="Product" { a href={"/products/" (enc(&p.pid))} { (p.pid) } }
                            td data-label="Name" { (p.name) }
                            td data-label="State" { @if p.enabled { "enabled" } @else { strong { "disabled" } } }
                            td data-label="Mode" { (p.mode) }
                            td data-label="Free" .num { (p.stats.free) }
                            td data-label="Devices" .num { (p.stats.devices) }
                        }
                    }
                }
            }
        }
        @if s.can(Scope::Write) {
            section aria-labelledby="new-h" {
                h2 #new-h { "New product" }
                form.stack method="post" action="/products" {
                    (s.csrf_field())
                    (field("name", "Name", "text", "", true, ""))
                    (field("pid", "Product id (empty: generated)", "text", "", false, "1 to 64 of A-Z a-z 0-9 . _ -"))
                    (mode_select(None))
                    (field("mac_range", "MAC range for generated triplets", "text", "", false, "e.g. 02:00:00:00:00:00-02:00:00:00:FF:FF"))
                    (field("ts_window", "ts window, seconds", "number", "", false, "empty: the default"))
                    (field("reregistration", "Re-registration", "text", "", false, "always, never or window:24h (empty: the default)"))
                    (signatures_select(None))
                    (admission_select(None))
                    (field("quota", "Most devices", "number", "", false, "empty: no limit"))
                    (field("low_water", "Low-water mark of free triplets", "number", "", false, "empty: none"))
                    button type="submit" { "Create product" }
                }
            }
        }
    };
    Ok(html(s.page("Products", "products", &body)))
}

fn mode_select(current: Option<&str>) -> Markup {
    html! {
        div.field {
            label for="f-mode" { "Where triplets come from" }
            select #f-mode name="mode" {
                @for (v, l) in [("pool", "pool (imported or generated ahead)"), ("generate", "generate at registration"), ("pool-then-generate", "pool, then generate")] {
                    option value=(v) selected[current == Some(v)] { (l) }
                }
            }
        }
    }
}

fn signatures_select(current: Option<&str>) -> Markup {
    html! {
        div.field {
            label for="f-signatures" { "Sign methods devices may use" }
            select #f-signatures name="signatures" aria-describedby="f-signatures-hint" {
                @for (v, l) in [("any", "any: hmacSha1, hmacSha256 and the device-bound ones"), ("bound", "bound: hmacSha1u and hmacSha256u only")] {
                    option value=(v) selected[current == Some(v)] { (l) }
                }
            }
            small #f-signatures-hint { "bound refuses devices that sign the seed's way: only for firmware that signs its unique too" }
        }
    }
}

fn admission_select(current: Option<&str>) -> Markup {
    html! {
        div.field {
            label for="f-admission" { "Which devices may register" }
            select #f-admission name="admission" aria-describedby="f-admission-hint" {
                @for (v, l) in [("open", "open: any device whose credentials verify"), ("listed", "listed: only the expected devices uploaded for it")] {
                    option value=(v) selected[current == Some(v)] { (l) }
                }
            }
            small #f-admission-hint { "listed refuses every unique not uploaded in advance (Expected devices, on the product's page)" }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ProductForm {
    name: String,
    #[serde(default)]
    pid: String,
    mode: String,
    #[serde(default)]
    mac_range: String,
    #[serde(default)]
    ts_window: String,
    #[serde(default)]
    reregistration: String,
    #[serde(default)]
    signatures: String,
    #[serde(default)]
    admission: String,
    #[serde(default)]
    quota: String,
    #[serde(default)]
    low_water: String,
}

pub(crate) async fn create_product(
    State(api): State<Api>,
    Posted(s, Form(f)): Posted<Form<ProductForm>>,
) -> Response {
    let body = (|| {
        Ok::<_, Problem>(NewProductBody {
            pid: opt(&f.pid),
            name: f.name.trim().to_owned(),
            mode: opt(&f.mode),
            mac_range: opt(&f.mac_range),
            ts_window: num("ts_window", &f.ts_window)?,
            reregistration: opt(&f.reregistration),
            signatures: opt(&f.signatures),
            admission: opt(&f.admission),
            quota: num("quota", &f.quota)?,
            low_water: num("low_water", &f.low_water)?,
        })
    })();
    let created = match body {
        Ok(b) => prod::create_product(State(api), s.caller.clone(), ApiJson(b)).await,
        Err(p) => Err(p),
    };
    match created {
        Ok((_, c)) => {
            let pid = c.0.product.pid.clone();
            secret_page(
                &s,
                "Product created",
                &html! { p { "Product " strong { (pid) } " is ready. Flash this secret into its devices; dynreg shows it only now (rotate it to get a new one)." } },
                &c.0.secret,
                &format!("/products/{}", enc(&pid)),
            )
        }
        Err(p) => back_to("/products", Err(p)),
    }
}

pub(crate) async fn product(
    s: SignedIn,
    State(api): State<Api>,
    Path(pid): Path<String>,
    Query(f): Query<Flash>,
) -> Result<Response, Refused> {
    let p = or_page(
        &s,
        prod::show_product(State(api), s.caller.clone(), ApiPath(pid.clone())).await,
    )?
    .0;
    let base = format!("/products/{}", enc(&p.pid));
    let write = s.can(Scope::Write);
    let opt_num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    let body = html! {
        h1 { "Product " (p.pid) }
        (flash(&f))
        dl.facts {
            dt { "Name" } dd { (p.name) }
            dt { "State" } dd { @if p.enabled { "enabled: devices may register" } @else { strong { "disabled: registrations are refused" } } }
            dt { "Mode" } dd { (p.mode) }
            dt { "MAC range" } dd { (p.mac_range.map_or_else(|| "none".to_owned(), |r| r.to_string())) }
            dt { "ts window" } dd { (p.ts_window) " s" }
            dt { "Re-registration" } dd { (p.rereg) }
            dt { "Admission" } dd { @if p.admission == Admission::Listed { "listed devices only (" (p.stats.expected) " listed, " (p.stats.expected_waiting) " not registered yet)" } @else { "open: any device whose credentials verify" } }
            dt { "Signatures" } dd { @if p.signatures == Signatures::Bound { "device-bound only (hmacSha1u, hmacSha256u)" } @else { "any (the seed's methods and device-bound ones)" } }
            dt { "Quota" } dd { (p.quota.map_or("no limit".to_owned(), |q| q.to_string())) }
            dt { "Created" } dd { (time_el(p.created_at)) }
            @if let Some(until) = p.previous_secret_until { dt { "Previous secret" } dd { "works until " (time_el(until)) } }
        }
        section aria-labelledby="pool-h" {
            h2 #pool-h { "Pool" }
            dl.facts.counts {
                dt { "Free" } dd #pool-free { (p.stats.free) }
                dt { "Bound" } dd { (p.stats.bound) }
                dt { "Revoked" } dd { (p.stats.revoked) }
                dt { "Withdrawn" } dd { (p.stats.withdrawn) }
                dt { "Devices" } dd { (p.stats.devices) }
                dt { "MACs left" } dd { (p.stats.mac_left.map_or("-".to_owned(), |m| m.to_string())) }
                dt { "Low-water mark" } dd { (p.stats.low_water.map_or("none".to_owned(), |m| m.to_string())) }
            }
            p {
                a href={"/devices?pid=" (enc(&p.pid))} { "Devices of " (p.pid) }
                " · "
                a href={(base) "/expected"} { "Expected devices" }
                " (" (p.stats.expected) " listed, " (p.stats.expected_waiting) " not registered yet)"
            }
        }
        @if write {
            section aria-labelledby="actions-h" {
                h2 #actions-h { "Registration" }
                div.row {
                    @if p.enabled {
                        form method="post" action={(base) "/disable"} data-confirm={"Refuse all registrations of " (p.pid) "?"} { (s.csrf_field()) button type="submit" { "Disable" } }
                    } @else {
                        form method="post" action={(base) "/enable"} { (s.csrf_field()) button type="submit" { "Enable" } }
                    }
                }
                h2 { "Secret" }
                form.row method="post" action={(base) "/rotate"} data-confirm="Give the product a new secret?" {
                    (s.csrf_field())
                    div.field {
                        label for="f-grace" { "Grace of the old secret" }
                        input #f-grace name="grace" value="90d" pattern="[0-9]{1,9}[smhd]?" aria-describedby="f-grace-hint";
                        small #f-grace-hint { "0 for a leaked secret; e.g. 12h, 30d" }
                    }
                    button type="submit" { "Rotate secret" }
                }
                @if p.previous_secret_until.is_some() {
                    form method="post" action={(base) "/retire"} data-confirm="Stop accepting the previous secret now?" { (s.csrf_field()) button type="submit" { "Retire the previous secret" } }
                }
                h2 { "Generate triplets" }
                form.row method="post" action={(base) "/generate"} {
                    (s.csrf_field())
                    div.field { label for="f-count" { "How many" } input #f-count name="count" type="number" min="1" max="10000000" value="100" required; }
                    div.field { label for="f-prefix" { "Barcode prefix" } input #f-prefix name="barcode_prefix" value=(format!("{}-", p.pid)); }
                    button type="submit" { "Generate and download CSV" }
                }
                p.muted { "The CSV holds the triplets' secrets; it is shown once (the pool export writes it again)." }
                h2 { "Import triplets" }
                form #import data-upload data-action={(base) "/import"} data-csrf=(s.csrf) data-count="imported" data-noun="triplets imported" data-counter="pool-free" {
                    div.field {
                        label for="f-file" { "Factory CSV (uuid,secret,mac,barcode)" }
                        input #f-file type="file" name="file" accept=".csv,text/csv" required;
                    }
                    button type="submit" { "Import" }
                    progress max="100" value="0" hidden {}
                    div role="status" aria-live="polite" {}
                }
                h2 { "Withdraw free triplets" }
                form.stack method="post" action={(base) "/withdraw"} data-confirm="Withdraw these triplets for good?" {
                    (s.csrf_field())
                    div.field { label for="f-uuids" { "uuids, one per line" } textarea #f-uuids name="uuids" rows="3" {} }
                    div.field { label for="f-barcodes" { "or barcodes, one per line" } textarea #f-barcodes name="barcodes" rows="3" {} }
                    button type="submit" { "Withdraw" }
                }
                p { a href={(base) "/pool.csv"} { "Export the pool as a factory CSV" } " (secrets included; audited)" }
                h2 { "Edit" }
                form.stack method="post" action=(base) {
                    (s.csrf_field())
                    (field("name", "Name", "text", &p.name, true, ""))
                    (mode_select(Some(&p.mode.to_string())))
                    (field("mac_range", "MAC range", "text", &p.mac_range.map(|r| r.to_string()).unwrap_or_default(), false, "empty: none"))
                    (field("ts_window", "ts window, seconds", "number", &p.ts_window.to_string(), true, ""))
                    (field("reregistration", "Re-registration", "text", &p.rereg.to_string(), true, "always, never or window:24h"))
                    (signatures_select(Some(&p.signatures.to_string())))
                    (admission_select(Some(&p.admission.to_string())))
                    (field("quota", "Most devices", "number", &opt_num(p.quota), false, "empty: no limit"))
                    (field("low_water", "Low-water mark", "number", &opt_num(p.stats.low_water), false, "empty: none"))
                    button type="submit" { "Save" }
                }
            }
        }
    };
    Ok(html(s.page(
        &format!("Product {}", p.pid),
        "products",
        &body,
    )))
}

pub(crate) async fn update_product(
    State(api): State<Api>,
    Path(pid): Path<String>,
    Posted(s, Form(f)): Posted<Form<ProductForm>>,
) -> Response {
    let to = format!("/products/{}", enc(&pid));
    let patch = (|| {
        Ok::<_, Problem>(ProductPatch {
            name: Some(f.name.trim().to_owned()),
            mode: opt(&f.mode),
            mac_range: Some(opt(&f.mac_range)),
            ts_window: num("ts_window", &f.ts_window)?,
            reregistration: opt(&f.reregistration),
            signatures: opt(&f.signatures),
            admission: opt(&f.admission),
            quota: Some(num("quota", &f.quota)?),
            low_water: Some(num("low_water", &f.low_water)?),
            enabled: None,
        })
    })();
    let r = match patch {
        Ok(patch) => {
            prod::update_product(State(api), s.caller.clone(), ApiPath(pid), ApiJson(patch))
                .await
                .map(|_| "Saved.".to_owned())
        }
        Err(p) => Err(p),
    };
    back_to(&to, r)
}

pub(crate) async fn enable_product(
    State(api): State<Api>,
    Path(pid): Path<String>,
    Posted(s, _): Posted<Bytes>,
) -> Response {
    let to = format!("/products/{}", enc(&pid));
    let action = prod::enable_product(State(api), s.caller.clone(), ApiPath(pid));
    form_action(&to, "Enabled: devices may register.", action).await
}

pub(crate) async fn disable_product(
    State(api): State<Api>,
    Path(pid): Path<String>,
    Posted(s, _): Posted<Bytes>,
) -> Response {
    let to = format!("/products/{}", enc(&pid));
    let action = prod::disable_product(State(api), s.caller.clone(), ApiPath(pid));
    form_action(&to, "Disabled: registrations are refused.", action).await
}

#[derive(Debug, Deserialize)]
pub(crate) struct RotateForm {
    #[serde(default)]
    grace: String,
}

pub(crate) async fn rotate_secret(
    State(api): State<Api>,
    Path(pid): Path<String>,
    Posted(s, Form(f)): Posted<Form<RotateForm>>,
) -> Response {
    let to = format!("/products/{}", enc(&pid));
    let body = RotateBody {
        grace: opt(&f.grace),
    };
    match prod::rotate_secret(
        State(api),
        s.caller.clone(),
        ApiPath(pid.clone()),
        ApiJson(body),
    )
    .await
    {
        Ok(r) => secret_page(
            &s,
            "New secret",
            &html! { p { "Product " strong { (pid) } " has a new secret. The old one works until " (time_el(r.0.previous_secret_until)) "." } },
            &r.0.secret,
            &to,
        ),
        Err(p) => back_to(&to, Err(p)),
    }
}

pub(crate) async fn retire_secret(
    State(api): State<Api>,
    Path(pid): Path<String>,
    Posted(s, _): Posted<Bytes>,
) -> Response {
    let to = format!("/products/{}", enc(&pid));
    let action = prod::retire_secret(State(api), s.caller.clone(), ApiPath(pid));
    form_action(&to, "The previous secret no longer works.", action).await
}
