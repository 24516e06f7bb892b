//! URLs that carry credentials (`amqp://user:password@host/vhost`,
//! `postgres://user:password@host/db`): parsed with the servo project's `url` crate,
//! and shown in logs and errors without their password.

pub use ::url::{Host, Url};

/// `text` with the password of its URL's user info replaced by `***`, for a log or an
/// error. A text that does not parse as a URL is redacted all the same (whatever lies
/// between the scheme's `://` and the last `@` before the path, after the first `:`),
/// so that a URL refused for another reason (a bad port) never shows its password.
pub fn redact(text: &str) -> String {
    if let Ok(mut u) = Url::parse(text) {
        if u.password().is_some() && u.set_password(Some("***")).is_ok() {
            return u.to_string();
        }
        if u.password().is_none() {
            return text.to_owned();
        }
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***{}", &rest[userinfo.len()..])
        }
        _ => text.to_owned(),
    }
}

/// The user name and password of `url`, percent-decoded (`None` when absent); the
/// error says which is not UTF-8 once decoded.
pub fn userinfo(url: &Url) -> Result<(Option<String>, Option<String>), String> {
    let decode = |what: &str, v: &str| {
        percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| format!("the {what} is not UTF-8 once %-decoded"))
    };
    let user = match url.username() {
        "" => None,
        u => Some(decode("user name", u)?),
    };
    let password = url.password().map(|p| decode("password", p)).transpose()?;
    Ok((user, password))
}

/// The host of `url` as a connection takes it: a name, or an IP address without the
/// brackets of an IPv6 one. `None` without a host.
pub fn host(url: &Url) -> Option<String> {
    match url.host()? {
        Host::Domain("") => None,
        Host::Domain(d) => Some(d.to_owned()),
        Host::Ipv4(a) => Some(a.to_string()),
        Host::Ipv6(a) => Some(a.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_parsed_or_not() {
        assert_eq!(redact("amqp://w:pw@h/v"), "amqp://w:***@h/v");
        assert_eq!(
            redact("postgres://u:p%40ss@db.example:5432/x?sslmode=require"),
            "postgres://u:***@db.example:5432/x?sslmode=require"
        );
        assert_eq!(redact("amqp://w@h/v"), "amqp://w@h/v");
        assert_eq!(redact("mqtt://u:secret@x:port/"), "mqtt://u:***@x:port/");
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(redact("host=db password=x"), "host=db password=x");
    }

    #[test]
    fn userinfo_is_decoded_and_ipv6_unbracketed() {
        let u = Url::parse("mqtts://dyn%40reg:p%3Aw@[::1]:8884").unwrap();
        assert_eq!(
            userinfo(&u).unwrap(),
            (Some("dyn@reg".into()), Some("p:w".into()))
        );
        assert_eq!(host(&u).as_deref(), Some("::1"));
        let u = Url::parse("mqtt://broker.example").unwrap();
        assert_eq!(userinfo(&u).unwrap(), (None, None));
        assert_eq!(host(&u).as_deref(), Some("broker.example"));
    }
}
