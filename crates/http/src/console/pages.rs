//! The console's pages and forms. Each action calls the admin API's handler for it
//! and renders the answer; see the module above.

use axum::Form;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Refused, Session, back_to, enc, no_store, see_other, time_el};
use crate::api::devices::{self as dev, DeviceQuery, DeviceView};
use crate::api::products::{
    self as prod, GenerateBody, NewProductBody, ProductPatch, ProductView, RotateBody, WithdrawBody,
};
use crate::api::records::{self as rec, AuditQuery, AuditView, NewTokenBody, RegistrationQuery};
use crate::api::{Api, Body, Caller, Path, Problem};
use dynreg_store::Scope;

/// Devices per page of the device list.
const DEVICE_PAGE: usize = 50;
/// Audit lines per page.
const AUDIT_PAGE: usize = 100;

/// The messages a redirect carries (`done`, `error`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Flash {
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

pub(super) fn flash(f: &Flash) -> Markup {
    html! {
        @if let Some(d) = &f.done { p.flash.done role="status" { (d) } }
        @if let Some(e) = &f.error { p.flash.error role="alert" { (e) } }
    }
}

/// A form with only its CSRF token.
#[derive(Debug, Deserialize)]
pub(crate) struct CsrfForm {
    pub(super) csrf: String,
}

pub(super) fn html(page: Markup) -> Response {
    Html(page.into_string()).into_response()
}

/// A trimmed, non-empty form value.
fn opt(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// A number field (empty: none); the error names the field.
fn num(field: &str, v: &str) -> Result<Option<u64>, Problem> {
    opt(v)
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| Problem::invalid(format!("{field}: `{t}` is not a whole number")))
        })
        .transpose()
}

/// Runs an API call; its problem becomes an error page.
pub(super) fn or_page<T>(s: &Session, r: Result<T, Problem>) -> Result<T, Refused> {
    r.map_err(|p| Refused::from(s.page_problem(&p)))
}

/// A form of one API action: checks its CSRF token, runs `action`, and goes back to
/// `to` saying `done`, or what the API refused.
pub(super) async fn act<T>(
    s: &Session,
    csrf: &str,
    to: &str,
    done: &str,
    action: impl std::future::Future<Output = Result<T, Problem>>,
) -> Response {
    if let Err(r) = s.check(csrf) {
        return r.into_response();
    }
    back_to(to, action.await.map(|_| done.to_owned()))
}

// ---- signing in and out ----

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
            let tls = super::came_over_tls(&headers);
            let mut r = see_other(&next);
            r.headers_mut()
                .insert(header::SET_COOKIE, super::session_cookie(token, tls));
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

pub(crate) async fn sign_out(s: Session, Form(f): Form<CsrfForm>) -> Response {
    if let Err(r) = s.check(&f.csrf) {
        return r.into_response();
    }
    let mut r = see_other("/sign-in");
    r.headers_mut()
        .insert(header::SET_COOKIE, super::session_cookie("", s.tls));
    r
}

// ---- dashboard ----

pub(crate) async fn dashboard(s: Session, State(api): State<Api>) -> Result<Response, Refused> {
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
            crate::api::Query(RegistrationQuery {
                pid: None,
                since: None,
                before: None,
                limit: Some(20),
            }),
        )
        .await,
    )?
    .0;
    let low: Vec<&ProductView> = products.iter().filter(|p| p.pool.low).collect();
    let waiting: Vec<&ProductView> = products
        .iter()
        .filter(|p| p.pool.expected_waiting > 0)
        .collect();
    let refusals = dynreg_registrar::metrics::metrics().refusals();
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
                    ul { @for p in &low { li { a href={"/products/" (enc(&p.pid))} { (p.pid) } ": " (p.pool.free) " free, mark " (p.pool.low_water.unwrap_or(0)) } } }
                }
                h3 { "Expected devices not registered yet" }
                @if waiting.is_empty() { p.muted { "None: every listed device has registered." } }
                @else {
                    ul { @for p in &waiting { li { a href={"/products/" (enc(&p.pid)) "/expected?waiting=true"} { (p.pid) } ": " (p.pool.expected_waiting) " of " (p.pool.expected) " listed" } } }
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

// ---- products ----

pub(crate) async fn products(
    s: Session,
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
                            td data-label="Free" .num { (p.pool.free) }
                            td data-label="Devices" .num { (p.pool.devices) }
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

/// A labelled input.
fn field(name: &str, label: &str, kind: &str, value: &str, required: bool, hint: &str) -> Markup {
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
    csrf: String,
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

fn secret_page(s: &Session, title: &str, intro: &Markup, secret: &str, next: &str) -> Response {
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

pub(crate) async fn create_product(
    s: Session,
    State(api): State<Api>,
    Form(f): Form<ProductForm>,
) -> Response {
    if let Err(r) = s.check(&f.csrf) {
        return r.into_response();
    }
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
        Ok(b) => prod::create_product(State(api), s.caller.clone(), Body(b)).await,
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
    s: Session,
    State(api): State<Api>,
    axum::extract::Path(pid): axum::extract::Path<String>,
    Query(f): Query<Flash>,
) -> Result<Response, Refused> {
    let p = or_page(
        &s,
        prod::show_product(State(api), s.caller.clone(), Path(pid.clone())).await,
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
            dt { "MAC range" } dd { (p.mac_range.as_deref().unwrap_or("none")) }
            dt { "ts window" } dd { (p.ts_window) " s" }
            dt { "Re-registration" } dd { (p.reregistration) }
            dt { "Admission" } dd { @if p.admission == "listed" { "listed devices only (" (p.pool.expected) " listed, " (p.pool.expected_waiting) " not registered yet)" } @else { "open: any device whose credentials verify" } }
            dt { "Signatures" } dd { @if p.signatures == "bound" { "device-bound only (hmacSha1u, hmacSha256u)" } @else { "any (the seed's methods and device-bound ones)" } }
            dt { "Quota" } dd { (p.quota.map_or("no limit".to_owned(), |q| q.to_string())) }
            dt { "Created" } dd { (time_el(p.created_at)) }
            @if let Some(until) = p.previous_secret_until { dt { "Previous secret" } dd { "works until " (time_el(until)) } }
        }
        section aria-labelledby="pool-h" {
            h2 #pool-h { "Pool" }
            dl.facts.counts {
                dt { "Free" } dd #pool-free { (p.pool.free) }
                dt { "Bound" } dd { (p.pool.bound) }
                dt { "Revoked" } dd { (p.pool.revoked) }
                dt { "Withdrawn" } dd { (p.pool.withdrawn) }
                dt { "Devices" } dd { (p.pool.devices) }
                dt { "MACs left" } dd { (p.pool.mac_left.map_or("-".to_owned(), |m| m.to_string())) }
                dt { "Low-water mark" } dd { (p.pool.low_water.map_or("none".to_owned(), |m| m.to_string())) }
            }
            p {
                a href={"/devices?pid=" (enc(&p.pid))} { "Devices of " (p.pid) }
                " · "
                a href={(base) "/expected"} { "Expected devices" }
                " (" (p.pool.expected) " listed, " (p.pool.expected_waiting) " not registered yet)"
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
                    (mode_select(Some(&p.mode)))
                    (field("mac_range", "MAC range", "text", p.mac_range.as_deref().unwrap_or(""), false, "empty: none"))
                    (field("ts_window", "ts window, seconds", "number", &p.ts_window.to_string(), true, ""))
                    (field("reregistration", "Re-registration", "text", &p.reregistration, true, "always, never or window:24h"))
                    (signatures_select(Some(&p.signatures)))
                    (admission_select(Some(&p.admission)))
                    (field("quota", "Most devices", "number", &opt_num(p.quota), false, "empty: no limit"))
                    (field("low_water", "Low-water mark", "number", &opt_num(p.pool.low_water), false, "empty: none"))
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
    s: Session,
    State(api): State<Api>,
    axum::extract::Path(pid): axum::extract::Path<String>,
    Form(f): Form<ProductForm>,
) -> Response {
    if let Err(r) = s.check(&f.csrf) {
        return r.into_response();
    }
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
        Ok(patch) => prod::update_product(State(api), s.caller.clone(), Path(pid), Body(patch))
            .await
            .map(|_| "Saved.".to_owned()),
        Err(p) => Err(p),
    };
    back_to(&to, r)
}

pub(crate) async fn enable_product(
    s: Session,
    State(api): State<Api>,
    axum::extract::Path(pid): axum::extract::Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let to = format!("/products/{}", enc(&pid));
    let action = prod::enable_product(State(api), s.caller.clone(), Path(pid));
    act(&s, &f.csrf, &to, "Enabled: devices may register.", action).await
}

pub(crate) async fn disable_product(
    s: Session,
    State(api): State<Api>,
    axum::extract::Path(pid): axum::extract::Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let to = format!("/products/{}", enc(&pid));
    let action = prod::disable_product(State(api), s.caller.clone(), Path(pid));
    act(
        &s,
        &f.csrf,
        &to,
        "Disabled: registrations are refused.",
        action,
    )
    .await
}

#[derive(Debug, Deserialize)]
pub(crate) struct RotateForm {
    csrf: String,
    #[serde(default)]
    grace: String,
}

pub(crate) async fn rotate_secret(
    s: Session,
    State(api): State<Api>,
    axum::extract::Path(pid): axum::extract::Path<String>,
    Form(f): Form<RotateForm>,
) -> Response {
    if let Err(r) = s.check(&f.csrf) {
        return r.into_response();
    }
    let to = format!("/products/{}", enc(&pid));
    let body = RotateBody {
        grace: opt(&f.grace),
    };
    match prod::rotate_secret(State(api), s.caller.clone(), Path(pid.clone()), Body(body)).await {
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
    s: Session,
    State(api): State<Api>,
    axum::extract::Path(pid): axum::extract::Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let to = format!("/products/{}", enc(&pid));
    let action = prod::retire_secret(State(api), s.caller.clone(), Path(pid));
    act(
        &s,
        &f.csrf,
        &to,
        "The previous secret no longer works.",
        action,
    )
    .await
}

#[derive(Debug, Deserialize)]
pub(crate) struct GenerateForm {
    csrf: String,
    count: String,
    #[serde(default)]
    barcode_prefix: String,
}

/// Generates and answers with the API's CSV download itself.
pub(crate) async fn generate_pool(
    s: Session,
    State(api): State<Api>,
    axum::extract::Path(pid): axum::extract::Path<String>,
    Form(f): Form<GenerateForm>,
) -> Response {
    if let Err(r) = s.check(&f.csrf) {
        return r.into_response();
    }
    let to = format!("/products/{}", enc(&pid));
    let count = match num("count", &f.count) {
        Ok(Some(c)) => c,
        Ok(None) => return back_to(&to, Err(Problem::invalid("count: give how many"))),
        Err(p) => return back_to(&to, Err(p)),
    };
    let body = GenerateBody {
        count,
        barcode_prefix: f.barcode_prefix.trim().to_owned(),
    };
    match prod::generate_pool(State(api), s.caller.clone(), Path(pid), Body(body)).await {
        Ok(csv) => csv,
        Err(p) => back_to(&to, Err(p)),
    }
}

/// A CSV uploaded by a page's script (`data-upload` in app.js): checks the session's
/// CSRF token from its `x-csrf-token` header, then answers with what the API's
/// handler `upload` answers (its JSON, or its problem document with the refused
/// `line`). The one way every console upload is taken.
pub(super) async fn csv_upload<T: axum::response::IntoResponse>(
    s: &Session,
    headers: &HeaderMap,
    upload: impl std::future::Future<Output = Result<T, Problem>>,
) -> Response {
    let csrf = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Err(r) = s.check(csrf) {
        return r.into_response();
    }
    match upload.await {
        Ok(j) => j.into_response(),
        Err(p) => p.into_response(),
    }
}

/// A factory CSV uploaded by the page's script; see [`csv_upload`].
pub(crate) async fn import_pool(
    s: Session,
    State(api): State<Api>,
    axum::extract::Path(pid): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let upload = prod::import_pool(State(api), s.caller.clone(), Path(pid), body);
    csv_upload(&s, &headers, upload).await
}

#[derive(Debug, Deserialize)]
pub(crate) struct WithdrawForm {
    csrf: String,
    #[serde(default)]
    uuids: String,
    #[serde(default)]
    barcodes: String,
}

pub(crate) async fn withdraw(
    s: Session,
    State(api): State<Api>,
    axum::extract::Path(pid): axum::extract::Path<String>,
    Form(f): Form<WithdrawForm>,
) -> Response {
    if let Err(r) = s.check(&f.csrf) {
        return r.into_response();
    }
    let to = format!("/products/{}", enc(&pid));
    let lines = |t: &str| t.lines().filter_map(opt).collect::<Vec<_>>();
    let body = WithdrawBody {
        uuids: lines(&f.uuids),
        barcodes: lines(&f.barcodes),
    };
    let r = prod::withdraw(State(api), s.caller.clone(), Path(pid), Body(body))
        .await
        .map(|w| format!("{} triplets withdrawn.", w.0.len()));
    back_to(&to, r)
}

pub(crate) async fn export_pool(
    s: Session,
    State(api): State<Api>,
    axum::extract::Path(pid): axum::extract::Path<String>,
) -> Response {
    let q = prod::ExportQuery { state: None };
    match prod::export_pool(
        State(api),
        s.caller.clone(),
        Path(pid),
        crate::api::Query(q),
    )
    .await
    {
        Ok(csv) => csv,
        Err(p) => s.page_problem(&p),
    }
}

// ---- devices ----

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
    s: Session,
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
    let page = dev::list_devices(State(api), s.caller.clone(), crate::api::Query(q)).await;
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
    s: Session,
    State(api): State<Api>,
    axum::extract::Path((pid, unique)): axum::extract::Path<(String, String)>,
    Query(f): Query<Flash>,
) -> Result<Response, Refused> {
    let d = or_page(
        &s,
        dev::show_device(
            State(api),
            s.caller.clone(),
            Path((pid.clone(), unique.clone())),
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
    s: Session,
    State(api): State<Api>,
    axum::extract::Path((pid, unique)): axum::extract::Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let to = format!("/devices/{}/{}", enc(&pid), enc(&unique));
    let action = dev::revoke_device(State(api), s.caller.clone(), Path((pid, unique)));
    act(&s, &f.csrf, &to, "Revoked.", action).await
}

pub(crate) async fn reset_device(
    s: Session,
    State(api): State<Api>,
    axum::extract::Path((pid, unique)): axum::extract::Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let to = format!("/devices/{}/{}", enc(&pid), enc(&unique));
    let action = dev::reset_device(State(api), s.caller.clone(), Path((pid, unique)));
    act(&s, &f.csrf, &to, "Reset: it may register again.", action).await
}

// ---- audit log ----

fn audit_table(lines: &[AuditView]) -> Markup {
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
    s: Session,
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
        match rec::list_audit(State(api), s.caller.clone(), crate::api::Query(q)).await {
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

// ---- tokens ----

pub(crate) async fn tokens(
    s: Session,
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
    csrf: String,
    name: String,
    scope: String,
}

pub(crate) async fn create_token(
    s: Session,
    State(api): State<Api>,
    Form(f): Form<TokenForm>,
) -> Response {
    if let Err(r) = s.check(&f.csrf) {
        return r.into_response();
    }
    let body = NewTokenBody {
        name: f.name.trim().to_owned(),
        scope: f.scope,
    };
    match rec::create_token(State(api), s.caller.clone(), Body(body)).await {
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
    s: Session,
    State(api): State<Api>,
    axum::extract::Path(name): axum::extract::Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let done = format!("Token {name} revoked.");
    let action = rec::revoke_token(State(api), s.caller.clone(), Path(name));
    act(&s, &f.csrf, "/tokens", &done, action).await
}
