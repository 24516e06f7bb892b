//! `dynreg token ...` (the admin API's tokens) and `dynreg audit list` (the audit log).

use clap::Subcommand;
use dynreg_store::{AuditFilter, Scope, TokenInfo};
use serde_json::{Value, json};

use crate::{Global, Open, Usage, actor, audited, output, unix_now};

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCmd {
    /// Create an API token and print it (shown only here; the store keeps a hash).
    /// Send it as `Authorization: Bearer <token>`.
    Create {
        /// Whom the token is for; the audit log names its holder by it. Unique among
        /// the tokens not revoked.
        #[arg(long)]
        name: String,
        /// What it may do: read (look), write (also change products, pools and
        /// devices) or admin (also manage tokens).
        #[arg(long)]
        scope: Scope,
    },
    /// List the tokens, revoked ones included (never the tokens themselves).
    List,
    /// Revoke a token by name: it stops working at once.
    Revoke {
        /// The token's name.
        name: String,
    },
}

fn token_json(t: &TokenInfo) -> Value {
    json!({
        "id": t.id, "name": t.name, "scope": t.scope.as_str(), "created_at": t.created_at,
        "created_by": t.created_by, "revoked_at": t.revoked_at,
    })
}

/// `dynreg token ...`.
pub(crate) fn token(g: &Global, cmd: TokenCmd) -> anyhow::Result<()> {
    // The first token may come before anything else: creating one creates the store,
    // as `product create` does.
    let mode = if matches!(cmd, TokenCmd::Create { .. }) {
        Open::Create
    } else {
        Open::Existing
    };
    let store = g.open(mode)?;
    match cmd {
        TokenCmd::Create { name, scope } => {
            let by = actor().name;
            let (info, token) = audited(&store, "token.created", "", &name, |ops, e| {
                e.detail = serde_json::json!({"scope": scope.to_string()}).to_string();
                ops.create_token(&name, scope, &by, unix_now())
            })?;
            if g.json {
                let mut v = token_json(&info);
                v["token"] = Value::String(token);
                output::json(&v)?;
            } else {
                println!("{token}");
                eprintln!(
                    "token `{}` ({} scope) created: it is shown only now, keep it where its holder can use it",
                    info.name, info.scope
                );
            }
        }
        TokenCmd::List => {
            let list = store.tokens()?;
            if g.json {
                output::json(&Value::Array(list.iter().map(token_json).collect()))?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.scope.to_string(),
                            output::time(t.created_at),
                            t.created_by.clone(),
                            t.revoked_at.map_or_else(String::new, output::time),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "SCOPE", "CREATED", "BY", "REVOKED"], &rows)?;
            }
        }
        TokenCmd::Revoke { name } => {
            let info = audited(&store, "token.revoked", "", &name, |ops, _| {
                ops.revoke_token(&name, unix_now())
            })?;
            if g.json {
                output::json(&token_json(&info))?;
            } else {
                println!("token `{name}` revoked");
            }
        }
    }
    store.close()?;
    Ok(())
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCmd {
    /// Print audit lines, newest first: registrations, revocations, resets, and every
    /// operator action from the CLI and the admin API (who, from where, what, when).
    List {
        /// Only lines about this product.
        #[arg(long)]
        pid: Option<String>,
        /// Only lines about this target (a device's unique, a token's name).
        #[arg(long)]
        target: Option<String>,
        /// Only lines about this triplet uuid.
        #[arg(long)]
        uuid: Option<String>,
        /// Only lines by this actor (a token's name, cli:USER, device).
        #[arg(long)]
        actor: Option<String>,
        /// Only this action (device.revoked), or an object's actions (device.).
        #[arg(long)]
        action: Option<String>,
        /// Only lines since this time (Unix seconds, RFC 3339, or an age like 24h).
        #[arg(long)]
        since: Option<String>,
        /// At most this many lines.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `dynreg audit ...`.
pub(crate) fn audit(g: &Global, cmd: AuditCmd) -> anyhow::Result<()> {
    let AuditCmd::List {
        pid,
        target,
        uuid,
        actor,
        action,
        since,
        limit,
    } = cmd;
    let since = since
        .as_deref()
        .map(|s| output::parse_time(s, unix_now()))
        .transpose()
        .map_err(|e| Usage(format!("--since: {e}")))?;
    let store = g.open(Open::Existing)?;
    let lines = store.audit(&AuditFilter {
        pid,
        target,
        uuid,
        actor,
        action,
        since,
        limit,
        ..AuditFilter::default()
    })?;
    if g.json {
        output::json(&Value::Array(
            lines
                .iter()
                .map(|r| {
                    let e = &r.entry;
                    json!({
                        "id": r.id, "at": e.at, "actor": e.actor, "origin": e.origin,
                        "action": e.action, "pid": e.pid, "target": e.target,
                        "uuid": e.uuid, "detail": e.detail,
                    })
                })
                .collect(),
        ))?;
    } else {
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|r| {
                let e = &r.entry;
                vec![
                    output::time(e.at),
                    e.actor.clone(),
                    e.origin.clone(),
                    e.action.clone(),
                    e.pid.clone(),
                    e.target.clone(),
                    e.uuid.clone(),
                    e.detail.clone(),
                ]
            })
            .collect();
        output::table(
            &[
                "TIME", "ACTOR", "FROM", "ACTION", "PID", "TARGET", "UUID", "DETAIL",
            ],
            &rows,
        )?;
    }
    store.close()?;
    Ok(())
}

#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCmd {
    /// Whether the event outbox is on, and how many events wait in it.
    Status,
    /// Turn the outbox off and drop the events waiting in it (when no webhook will
    /// take them any more). `serve --webhook-url` turns it on again.
    Off {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// `dynreg outbox ...`.
pub(crate) fn outbox(g: &Global, cmd: &OutboxCmd) -> anyhow::Result<()> {
    let store = g.open(Open::Existing)?;
    match cmd {
        OutboxCmd::Status => {
            let (on, backlog) = (store.outbox_on()?, store.outbox_backlog()?);
            if g.json {
                output::json(&json!({ "on": on, "backlog": backlog }))?;
            } else if on {
                println!("outbox on: {backlog} events waiting for delivery");
            } else {
                println!("outbox off (serve --webhook-url turns it on)");
            }
        }
        &OutboxCmd::Off { yes } => {
            let backlog = store.outbox_backlog()?;
            if backlog > 0
                && !yes
                && !output::confirm(&format!(
                    "turn the outbox off and drop the {backlog} events waiting in it?"
                ))?
            {
                anyhow::bail!("not confirmed: the outbox is as it was");
            }
            let dropped = audited(&store, "outbox.off", "", "", |ops, e| {
                dynreg_store::admin::outbox_off(ops, e)
            })?;
            if g.json {
                output::json(&json!({ "on": false, "dropped": dropped }))?;
            } else {
                println!("outbox off; {dropped} waiting events dropped");
            }
        }
    }
    store.close()?;
    Ok(())
}
