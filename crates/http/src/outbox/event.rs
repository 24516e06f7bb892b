//! The events' format, the same for every destination: `{"type", "id", "time",
//! "data"}` as JSON, where `data` is the device's triplet (`pid`, `unique`, `uuid`,
//! `mac`, `barcode`, and `key_pid` after a `replacePid`, `secret` when
//! [`super::Delivery::include_secrets`]) or, for `pool.low`, `{"pid", "free",
//! "low_water"}`. docs/api.md documents it for the platform.

use dynreg_registrar::events::Event;
use dynreg_store::OutboxEvent;

/// The JSON body of an event; `secret` is the device's secret, when it is sent
/// ([`super::Delivery::include_secrets`]).
pub fn body(event: &OutboxEvent, secret: Option<&str>) -> Vec<u8> {
    let detail = serde_json::from_str::<serde_json::Value>(&event.detail).ok();
    if event.kind == "pool.low" {
        // {"pid", "free", "low_water"}
        let mut data = detail.unwrap_or_else(|| serde_json::json!({}));
        data["pid"] = serde_json::Value::String(event.pid.clone());
        return envelope(event, &data);
    }
    let mut data = serde_json::json!({
        "pid": event.pid,
        "unique": event.unique,
        "uuid": event.uuid,
        "mac": event.mac,
        "barcode": event.barcode,
    });
    // A device that moved with replacePid says where it came from.
    if let Some(key_pid) = detail.as_ref().and_then(|d| d.get("key_pid")) {
        data["key_pid"] = key_pid.clone();
    }
    if let Some(secret) = secret {
        data["secret"] = serde_json::Value::String(secret.to_owned());
    }
    envelope(event, &data)
}

/// `{"type", "id", "time", "data"}` as bytes.
fn envelope(event: &OutboxEvent, data: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": event.kind,
        "id": event.id.to_string(),
        "time": dynreg_registrar::model::rfc3339(event.at),
        "data": data,
    }))
    .unwrap_or_default()
}

/// The event of `e` as sent: its id, kind, pid and [`body`].
pub fn event(e: &OutboxEvent, secret: Option<&str>) -> Event {
    Event {
        id: e.id,
        kind: e.kind.clone(),
        pid: e.pid.clone(),
        body: body(e, secret),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_the_event() {
        let e = OutboxEvent {
            id: 42,
            at: 1_764_633_600,
            kind: "device.registered".into(),
            pid: "Q".into(),
            unique: "d1".into(),
            uuid: "u1".into(),
            mac: "02:00:00:00:00:01".into(),
            barcode: "B1".into(),
            detail: r#"{"key_pid":"P"}"#.into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&e, None)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "device.registered", "id": "42", "time": "2025-12-02T00:00:00Z",
                "data": {"pid": "Q", "unique": "d1", "uuid": "u1", "mac": "02:00:00:00:00:01",
                         "barcode": "B1", "key_pid": "P"},
            })
        );
        let low = OutboxEvent {
            kind: "pool.low".into(),
            unique: String::new(),
            uuid: String::new(),
            mac: String::new(),
            barcode: String::new(),
            detail: r#"{"free":9,"low_water":10}"#.into(),
            ..e
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&low, None)).unwrap();
        assert_eq!(
            v["data"],
            serde_json::json!({"pid": "Q", "free": 9, "low_water": 10})
        );
        assert_eq!(v["type"], "pool.low");
    }
}
