//! `serve --demo`: a ready-to-paste registration against the running service.

use std::net::SocketAddr;

use anyhow::Context;
use dynreg_proto::credentials::{Credentials, SignMethod, sign};
use dynreg_proto::{RegisterRequest, Topic};
use dynreg_registrar::SourceMode;
use dynreg_store::NewProduct;

use crate::store::Backend;

use crate::unix_now;

/// Finds or creates the `demo` product and prints a ready-to-paste registration.
pub(super) fn demo(store: &Backend, listen: SocketAddr) -> anyhow::Result<()> {
    let existing = store
        .list_products()?
        .into_iter()
        .find(|p| p.name == "demo");
    let pid = match existing {
        Some(p) => p.pid,
        None => {
            let p = store.create_product(
                NewProduct {
                    pid: None,
                    name: "demo".into(),
                    mode: SourceMode::Generate,
                    mac_range: None,
                    ts_window: dynreg_proto::credentials::DEFAULT_TS_WINDOW,
                    rereg: dynreg_registrar::ReregPolicy::DEFAULT,
                    signatures: dynreg_registrar::Signatures::Any,
                    admission: dynreg_registrar::Admission::Open,
                    quota: None,
                    low_water: None,
                },
                unix_now(),
            )?;
            p.pid
        }
    };
    let product = store.load_product(&pid)?.context("demo product vanished")?;
    if !product.enabled {
        println!(
            "demo product {pid} is disabled: the command below is refused (CONNECT not authorized) until `dynreg product enable {pid}`\n"
        );
    }
    let ts = unix_now();
    let unique = format!("demo{}", ts % 100_000);
    let creds = Credentials {
        pid: &pid,
        unique: &unique,
        sign_method: SignMethod::HmacSha256,
        ts,
    };
    let password = sign(
        SignMethod::HmacSha256,
        product.secret.expose().as_bytes(),
        &pid,
        &unique,
        ts,
    );
    let host = if listen.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        listen.ip().to_string()
    };
    let request = String::from_utf8(RegisterRequest::new("1", ts).to_json())?;
    println!(
        "demo product: pid {pid}, secret {}",
        product.secret.expose()
    );
    println!("register a device (credentials valid for 15 minutes; needs mosquitto-clients):\n");
    println!(
        "  mosquitto_rr -h {host} -p {port} -V 5 -i '{cid}' -u '{user}' -P '{password}' -t '{req}' -e '{resp}' -m '{request}'\n",
        port = listen.port(),
        cid = creds.client_id(),
        user = creds.username(),
        req = Topic::request(&pid, &unique),
        resp = Topic::response(&pid, &unique),
    );
    Ok(())
}
