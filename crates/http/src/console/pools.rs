//! A product's pool from its page: generate, import, withdraw, export.

use axum::Form;
use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use super::forms::*;
use super::{Posted, SignedIn, back_to, enc};
use crate::api::pools::{self as pools, GenerateBody, WithdrawBody};
use crate::api::{Api, ApiJson, ApiPath, ApiQuery, Problem};

#[derive(Debug, Deserialize)]
pub(crate) struct GenerateForm {
    count: String,
    #[serde(default)]
    barcode_prefix: String,
}

/// Generates and answers with the API's CSV download itself.
pub(crate) async fn generate_pool(
    State(api): State<Api>,
    Path(pid): Path<String>,
    Posted(s, Form(f)): Posted<Form<GenerateForm>>,
) -> Response {
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
    match pools::generate_pool(State(api), s.caller.clone(), ApiPath(pid), ApiJson(body)).await {
        Ok(csv) => csv,
        Err(p) => back_to(&to, Err(p)),
    }
}

/// A factory CSV uploaded by the page's script; see [`csv_upload`].
pub(crate) async fn import_pool(
    State(api): State<Api>,
    Path(pid): Path<String>,
    Posted(s, body): Posted<Bytes>,
) -> Response {
    let upload = pools::import_pool(State(api), s.caller.clone(), ApiPath(pid), body);
    csv_upload(upload).await
}

#[derive(Debug, Deserialize)]
pub(crate) struct WithdrawForm {
    #[serde(default)]
    uuids: String,
    #[serde(default)]
    barcodes: String,
}

pub(crate) async fn withdraw(
    State(api): State<Api>,
    Path(pid): Path<String>,
    Posted(s, Form(f)): Posted<Form<WithdrawForm>>,
) -> Response {
    let to = format!("/products/{}", enc(&pid));
    let lines = |t: &str| t.lines().filter_map(opt).collect::<Vec<_>>();
    let body = WithdrawBody {
        uuids: lines(&f.uuids),
        barcodes: lines(&f.barcodes),
    };
    let r = pools::withdraw(State(api), s.caller.clone(), ApiPath(pid), ApiJson(body))
        .await
        .map(|w| format!("{} triplets withdrawn.", w.0.len()));
    back_to(&to, r)
}

pub(crate) async fn export_pool(
    s: SignedIn,
    State(api): State<Api>,
    Path(pid): Path<String>,
) -> Response {
    let q = pools::ExportQuery { state: None };
    match pools::export_pool(State(api), s.caller.clone(), ApiPath(pid), ApiQuery(q)).await {
        Ok(csv) => csv,
        Err(p) => s.page_problem(&p),
    }
}
