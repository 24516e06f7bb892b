//! The web console over real HTTP on port 0 (the browser test is
//! crates/cli/tests/console.rs): signing in sets the session cookie as documented,
//! pages need a session, forms need the session's CSRF token, a read session cannot
//! change anything, and the API takes the cookie for reading only.

use dynreg_registrar::SourceMode;
use dynreg_store::{Operator, Scope};
use dynreg_testkit::TempStore;

mod common;
use common::{header, request as call, start};

fn token(store: &TempStore, name: &str, scope: Scope) -> String {
    common::token_named(store, name, scope)
}

/// The session cookie's attributes, lower case.
fn cookie_of(head: &str) -> String {
    header(head, "set-cookie").unwrap().to_ascii_lowercase()
}

/// The CSRF token of a signed-in page.
fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 64].to_owned()
}

const FORM: &str = "content-type: application/x-www-form-urlencoded\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_csrf_and_scopes() {
    let s = start().await;
    s.store.product("lamp", SourceMode::Generate);
    let admin = token(&s.store, "ops", Scope::Admin);
    let read = token(&s.store, "viewer", Scope::Read);

    // Without a session: to the sign-in page, which comes back here.
    let (status, head, _) = call(s.addr, "GET", "/products/lamp", "", "").await;
    assert_eq!(status, 303);
    assert_eq!(
        header(&head, "location"),
        Some("/sign-in?next=%2Fproducts%2Flamp")
    );
    assert!(
        header(&head, "content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );

    // A wrong token is refused; a good one gets the cookie, Secure behind TLS.
    let (status, _, body) = call(s.addr, "POST", "/sign-in", FORM, "token=nope&next=%2F").await;
    assert_eq!(status, 401);
    assert!(body.contains("unknown or revoked"), "{body}");
    let form = format!("token={admin}&next=%2Fproducts");
    let (status, head, _) = call(s.addr, "POST", "/sign-in", FORM, &form).await;
    assert_eq!(
        (status, header(&head, "location")),
        (303, Some("/products"))
    );
    let set = cookie_of(&head);
    assert!(
        set.contains("httponly") && set.contains("samesite=strict") && set.contains("path=/"),
        "{set}"
    );
    assert!(!set.contains("secure"), "{set}");
    let tls = format!("{FORM}x-forwarded-proto: https\r\n");
    let (_, head, _) = call(s.addr, "POST", "/sign-in", &tls, &form).await;
    assert!(cookie_of(&head).contains("; secure"));
    // Not from another site's page.
    let cross = format!("{FORM}origin: https://evil.example\r\n");
    let (status, head, _) = call(s.addr, "POST", "/sign-in", &cross, &form).await;
    assert_eq!(status, 403);
    assert!(header(&head, "set-cookie").is_none());
    // (A browser sends `Origin: null` when the page that posts hides its origin.)
    let hidden = format!("{FORM}origin: null\r\n");
    let (status, _, _) = call(s.addr, "POST", "/sign-in", &hidden, &form).await;
    assert_eq!(status, 403);
    // The console's own pages let the browser name their origin on its forms.
    let (_, head, _) = call(s.addr, "GET", "/sign-in", "", "").await;
    assert_eq!(header(&head, "referrer-policy"), Some("same-origin"));
    // Only local paths to come back to.
    let away = format!("token={admin}&next=%2F%2Fevil.example");
    let (_, head, _) = call(s.addr, "POST", "/sign-in", FORM, &away).await;
    assert_eq!(header(&head, "location"), Some("/"));

    let session = |t: &str| format!("cookie: dynreg_session={t}\r\n");
    let (status, _, page) = call(s.addr, "GET", "/products/lamp", &session(&admin), "").await;
    assert_eq!(status, 200);
    assert!(page.contains("Disable"), "the admin sees the buttons");
    let token_csrf = csrf(&page);

    // A form without the session's CSRF token changes nothing.
    let with_form = format!("{}{FORM}", session(&admin));
    let (status, _, _) = call(
        s.addr,
        "POST",
        "/products/lamp/disable",
        &with_form,
        "csrf=0000",
    )
    .await;
    assert_eq!(status, 403);
    assert!(s.store.store.load_product("lamp").unwrap().unwrap().enabled);
    let (status, head, _) = call(
        s.addr,
        "POST",
        "/products/lamp/disable",
        &with_form,
        &format!("csrf={token_csrf}"),
    )
    .await;
    assert_eq!(
        (status, header(&head, "location")),
        (
            303,
            Some("/products/lamp?done=Disabled%3A%20registrations%20are%20refused.")
        )
    );
    assert!(!s.store.store.load_product("lamp").unwrap().unwrap().enabled);
    // The action is the API's: audited under the token's name.
    let audit = s
        .store
        .store
        .audit(&dynreg_store::AuditFilter {
            action: Some("product.disabled".into()),
            limit: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(audit[0].entry.actor, "ops");

    // A read session sees no buttons, and its forms are refused for their scope.
    let (_, _, page) = call(s.addr, "GET", "/products/lamp", &session(&read), "").await;
    assert!(
        !page.contains("<button type=\"submit\">Enable</button>"),
        "a read token sees Enable"
    );
    assert!(
        !page.contains("/tokens"),
        "a read token sees the tokens page"
    );
    let read_form = format!("{}{FORM}", session(&read));
    let (status, head, _) = call(
        s.addr,
        "POST",
        "/products/lamp/enable",
        &read_form,
        &format!("csrf={}", csrf(&page)),
    )
    .await;
    assert_eq!(status, 303);
    assert!(
        header(&head, "location").unwrap().contains("error="),
        "{head}"
    );
    assert!(!s.store.store.load_product("lamp").unwrap().unwrap().enabled);
    let (status, _, _) = call(s.addr, "GET", "/tokens", &session(&read), "").await;
    assert_eq!(status, 403);

    // The API takes the cookie for reading, never for changing.
    let (status, _, _) = call(s.addr, "GET", "/api/v1/products/lamp", &session(&read), "").await;
    assert_eq!(status, 200);
    let (status, _, _) = call(
        s.addr,
        "POST",
        "/api/v1/products/lamp/enable",
        &session(&admin),
        "",
    )
    .await;
    assert_eq!(status, 401);

    // Signing out clears the cookie; a revoked token's session ends.
    let (status, head, _) = call(
        s.addr,
        "POST",
        "/sign-out",
        &with_form,
        &format!("csrf={token_csrf}"),
    )
    .await;
    assert_eq!(status, 303);
    assert!(cookie_of(&head).contains("max-age=0"));
    s.store.store.revoke_token("viewer", 1).unwrap();
    let (status, head, _) = call(s.addr, "GET", "/", &session(&read), "").await;
    assert_eq!(status, 303);
    assert!(cookie_of(&head).contains("max-age=0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_shown_once_and_not_cached() {
    let s = start().await;
    s.store.product("lamp", SourceMode::Generate);
    let admin = token(&s.store, "ops", Scope::Admin);
    let session = format!("cookie: dynreg_session={admin}\r\n");
    let (_, _, page) = call(s.addr, "GET", "/products/lamp", &session, "").await;
    let csrf = csrf(&page);
    let with_form = format!("{session}{FORM}");
    let old = s.store.store.load_product("lamp").unwrap().unwrap().secret;

    // Rotation: the new secret on a page that is not cached; the old one in grace.
    let (status, head, page) = call(
        s.addr,
        "POST",
        "/products/lamp/rotate",
        &with_form,
        &format!("csrf={csrf}&grace=1h"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    let p = s.store.store.load_product("lamp").unwrap().unwrap();
    assert_ne!(p.secret, old);
    assert!(page.contains(p.secret.expose()), "the new secret is shown");
    assert_eq!(p.previous_secret.as_ref().map(|x| &x.secret), Some(&old));
    // Retiring the old one.
    let (status, _, _) = call(
        s.addr,
        "POST",
        "/products/lamp/retire",
        &with_form,
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 303);
    let p = s.store.store.load_product("lamp").unwrap().unwrap();
    assert!(p.previous_secret.is_none_or(|x| x.until <= common::now()));

    // A token made on the tokens page works, and is shown once.
    let (status, head, page) = call(
        s.addr,
        "POST",
        "/tokens",
        &with_form,
        &format!("csrf={csrf}&name=robot&scope=read"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    let at = page.find("dynreg_").unwrap();
    let made: String = page[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let (status, _, _) = call(
        s.addr,
        "GET",
        "/",
        &format!("cookie: dynreg_session={made}\r\n"),
        "",
    )
    .await;
    assert_eq!(status, 200, "the new token signs in: {made}");
}

/// Every request of the console that changes something is refused with the CSRF page
/// when it lacks the session's token, whatever else its form holds or lacks: the
/// check comes before the form is read (a form with missing fields is not a 422 that
/// skips it), and an upload without the header is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_needs_the_csrf_token() {
    let s = start().await;
    s.store.product("lamp", SourceMode::Generate);
    let admin = token(&s.store, "ops", Scope::Admin);
    s.store
        .store
        .create_token("robot", Scope::Read, "test", common::now())
        .unwrap();
    let with_form = format!("cookie: dynreg_session={admin}\r\n{FORM}");
    let routes = [
        "/sign-out",
        "/products",
        "/products/lamp",
        "/products/lamp/enable",
        "/products/lamp/disable",
        "/products/lamp/rotate",
        "/products/lamp/retire",
        "/products/lamp/generate",
        "/products/lamp/import",
        "/products/lamp/withdraw",
        "/products/lamp/expected",
        "/products/lamp/expected/d1/remove",
        "/devices/lamp/d1/revoke",
        "/devices/lamp/d1/reset",
        "/tokens",
        "/tokens/robot/revoke",
    ];
    for route in routes {
        for body in ["", "csrf=0000", "name=x&mode=pool&count=5&csrf="] {
            let (status, _, page) = call(s.addr, "POST", route, &with_form, body).await;
            assert_eq!(status, 403, "POST {route} with `{body}`: {page}");
            assert!(page.contains("CSRF token"), "POST {route}: {page}");
        }
    }
    let p = s.store.store.load_product("lamp").unwrap().unwrap();
    assert!(p.enabled && p.previous_secret.is_none());
    assert_eq!(s.store.store.tokens().unwrap().len(), 2);
}
